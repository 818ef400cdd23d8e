//! Loading Kubernetes manifests into typed objects, strictly.
//!
//! Every YAML document is read into the real API type of its `kind`
//! (`k8s-openapi` for core kinds, the typed structs of [`crate::keda`] and
//! [`crate::monitoring`] for CRDs). `k8s-openapi` types skip unknown fields;
//! here every skipped field is an error, reported with its path, so a typo
//! such as `terminationGracePeriodSecond` cannot pass.

use std::fmt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::keda::{ScaledObject, TriggerAuthentication};
use crate::monitoring::ServiceMonitor;
use crate::{Error, Result};

/// Largest manifest file read (1 MiB).
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// One typed object.
#[derive(Clone)]
#[non_exhaustive]
pub enum Object {
    /// `apps/v1` Deployment.
    Deployment(Box<Deployment>),
    /// `v1` Service.
    Service(Box<Service>),
    /// `v1` ConfigMap.
    ConfigMap(Box<ConfigMap>),
    /// `v1` Secret (its values are never printed by `Debug`).
    Secret(Box<Secret>),
    /// `autoscaling/v2` HorizontalPodAutoscaler.
    HorizontalPodAutoscaler(Box<HorizontalPodAutoscaler>),
    /// `policy/v1` PodDisruptionBudget.
    PodDisruptionBudget(Box<PodDisruptionBudget>),
    /// `keda.sh/v1alpha1` ScaledObject.
    ScaledObject(Box<ScaledObject>),
    /// `keda.sh/v1alpha1` TriggerAuthentication.
    TriggerAuthentication(Box<TriggerAuthentication>),
    /// `monitoring.coreos.com/v1` ServiceMonitor.
    ServiceMonitor(Box<ServiceMonitor>),
}

impl Object {
    /// `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Deployment(_) => "Deployment",
            Object::Service(_) => "Service",
            Object::ConfigMap(_) => "ConfigMap",
            Object::Secret(_) => "Secret",
            Object::HorizontalPodAutoscaler(_) => "HorizontalPodAutoscaler",
            Object::PodDisruptionBudget(_) => "PodDisruptionBudget",
            Object::ScaledObject(_) => "ScaledObject",
            Object::TriggerAuthentication(_) => "TriggerAuthentication",
            Object::ServiceMonitor(_) => "ServiceMonitor",
        }
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        let m = match self {
            Object::Deployment(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::HorizontalPodAutoscaler(o) => &o.metadata,
            Object::PodDisruptionBudget(o) => &o.metadata,
            Object::ScaledObject(o) => &o.metadata,
            Object::TriggerAuthentication(o) => &o.metadata,
            Object::ServiceMonitor(o) => &o.metadata,
        };
        m.name.as_deref().unwrap_or("")
    }
}

impl fmt::Debug for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind(), self.name())
    }
}

/// A typed object and where it came from.
#[derive(Debug, Clone)]
pub struct Document {
    /// `file.yaml#index`.
    pub source: String,
    /// The object.
    pub object: Object,
}

/// Deserializes `value` into `T`, failing on any field `T` would skip.
pub fn strict<T: DeserializeOwned>(value: serde_yaml_ng::Value, what: &str) -> Result<T> {
    let mut ignored = Vec::new();
    let out: std::result::Result<T, _> =
        serde_ignored::deserialize(value, |path| ignored.push(path.to_string()));
    let out = out.map_err(|e| Error::InvalidConfig(format!("{what}: {e}")))?;
    if !ignored.is_empty() {
        return Err(Error::InvalidConfig(format!(
            "{what}: unknown field(s) {}",
            ignored.join(", ")
        )));
    }
    Ok(out)
}

/// Types one parsed YAML document by its `apiVersion` and `kind`.
pub fn type_document(value: serde_yaml_ng::Value, source: &str) -> Result<Object> {
    let field = |k: &str| value.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let api = field("apiVersion").ok_or_else(|| Error::InvalidConfig(format!("{source}: no apiVersion")))?;
    let kind = field("kind").ok_or_else(|| Error::InvalidConfig(format!("{source}: no kind")))?;
    let what = format!("{source} ({kind})");
    Ok(match (api.as_str(), kind.as_str()) {
        ("apps/v1", "Deployment") => Object::Deployment(Box::new(strict(value, &what)?)),
        ("v1", "Service") => Object::Service(Box::new(strict(value, &what)?)),
        ("v1", "ConfigMap") => Object::ConfigMap(Box::new(strict(value, &what)?)),
        ("v1", "Secret") => Object::Secret(Box::new(strict(value, &what)?)),
        ("autoscaling/v2", "HorizontalPodAutoscaler") => {
            Object::HorizontalPodAutoscaler(Box::new(strict(value, &what)?))
        }
        ("policy/v1", "PodDisruptionBudget") => Object::PodDisruptionBudget(Box::new(strict(value, &what)?)),
        ("keda.sh/v1alpha1", "ScaledObject") => Object::ScaledObject(Box::new(strict(value, &what)?)),
        ("keda.sh/v1alpha1", "TriggerAuthentication") => {
            Object::TriggerAuthentication(Box::new(strict(value, &what)?))
        }
        ("monitoring.coreos.com/v1", "ServiceMonitor") => {
            Object::ServiceMonitor(Box::new(strict(value, &what)?))
        }
        (a, k) => {
            return Err(Error::InvalidConfig(format!(
                "{source}: {a} {k} is not a kind these manifests use"
            )))
        }
    })
}

/// Splits multi-document YAML text into untyped documents (empty documents skipped).
pub fn parse_values(text: &str, source: &str) -> Result<Vec<serde_yaml_ng::Value>> {
    let mut out = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v = serde_yaml_ng::Value::deserialize(de)
            .map_err(|e| Error::InvalidConfig(format!("{source}#{i}: {e}")))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// Parses and types every document of a YAML text.
pub fn parse_documents(text: &str, source: &str) -> Result<Vec<Document>> {
    parse_values(text, source)?
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let src = format!("{source}#{i}");
            Ok(Document {
                object: type_document(v, &src)?,
                source: src,
            })
        })
        .collect()
}

fn read_limited(path: &Path) -> Result<String> {
    let meta =
        std::fs::metadata(path).map_err(|e| Error::InvalidConfig(format!("{}: {e}", path.display())))?;
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(Error::InvalidConfig(format!(
            "{}: {} bytes, at most {MAX_MANIFEST_BYTES}",
            path.display(),
            meta.len()
        )));
    }
    std::fs::read_to_string(path).map_err(|e| Error::InvalidConfig(format!("{}: {e}", path.display())))
}

/// A `kustomization.yaml` of the subset these manifests use: resources only.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Kustomization {
    /// `kustomize.config.k8s.io/v1beta1`.
    pub api_version: String,
    /// `Kustomization`.
    pub kind: String,
    /// Files and directories (other kustomizations).
    pub resources: Vec<String>,
}

/// Loads a kustomization directory: every resource file, recursing into
/// directories that hold a `kustomization.yaml`. Only `resources` is
/// understood; any other kustomize feature is an error (so what is loaded
/// here is exactly what `kubectl apply -k` would apply).
pub fn load_kustomization(dir: impl AsRef<Path>) -> Result<Vec<Document>> {
    let mut out = Vec::new();
    let mut seen = Vec::new();
    load_dir(dir.as_ref(), &mut out, &mut seen, 0)?;
    Ok(out)
}

fn load_dir(dir: &Path, out: &mut Vec<Document>, seen: &mut Vec<PathBuf>, depth: usize) -> Result<()> {
    if depth > 8 {
        return Err(Error::InvalidConfig(format!(
            "{}: kustomization nesting too deep",
            dir.display()
        )));
    }
    let file = dir.join("kustomization.yaml");
    let text = read_limited(&file)?;
    let values = parse_values(&text, &file.display().to_string())?;
    let [value] = values.as_slice() else {
        return Err(Error::InvalidConfig(format!(
            "{}: expected one document",
            file.display()
        )));
    };
    let k: Kustomization = strict(value.clone(), &file.display().to_string())?;
    for r in &k.resources {
        let p = dir.join(r);
        let canon = p
            .canonicalize()
            .map_err(|e| Error::InvalidConfig(format!("{}: {e}", p.display())))?;
        if seen.contains(&canon) {
            return Err(Error::InvalidConfig(format!("{}: listed twice", p.display())));
        }
        seen.push(canon);
        if p.is_dir() {
            load_dir(&p, out, seen, depth + 1)?;
        } else {
            let text = read_limited(&p)?;
            out.extend(parse_documents(&text, &p.display().to_string())?);
        }
    }
    Ok(())
}

/// The objects of one kind, with their sources.
pub fn of_kind<'a>(docs: &'a [Document], kind: &'a str) -> impl Iterator<Item = &'a Document> + 'a {
    docs.iter().filter(move |d| d.object.kind() == kind)
}
