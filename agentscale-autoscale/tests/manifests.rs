//! The shipped manifests (`deploy/`) and the Dockerfile, parsed into the
//! real API types and cross-checked against what the SDK serves and
//! exports. Each check class has a negative test: a mutated manifest must
//! be rejected.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use agentscale_autoscale::manifest::{self, Document, Object};
use agentscale_autoscale::{autoscaler_for, sim::Autoscaler};
use agentscale_core::metrics::{Exporter, Metrics};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn overlay(name: &str) -> Vec<Document> {
    manifest::load_kustomization(root().join("deploy/overlays").join(name)).unwrap()
}

/// Names of the metric families the SDK exports, from its own encoder.
fn sdk_metric_names() -> Vec<String> {
    let m = Metrics::new();
    m.record_depth("q", &agentscale_core::Depth::default());
    m.encode()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------- checks

/// Every check over one overlay's objects; returns the first violation.
fn check(docs: &[Document]) -> Result<(), String> {
    let deployments: Vec<&Deployment> = docs
        .iter()
        .filter_map(|d| match &d.object {
            Object::Deployment(x) => Some(&**x),
            _ => None,
        })
        .collect();
    let worker = deployments
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some("agentscale-worker"))
        .ok_or("no agentscale-worker Deployment")?;
    check_selectors(docs)?;
    check_worker(worker, docs)?;
    check_autoscaling(docs)?;
    Ok(())
}

fn labels_match(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn check_selectors(docs: &[Document]) -> Result<(), String> {
    let mut pod_labels = Vec::new();
    for d in docs {
        if let Object::Deployment(dep) = &d.object {
            let spec = dep.spec.as_ref().ok_or("deployment without spec")?;
            let sel = spec.selector.match_labels.clone().unwrap_or_default();
            let labels = spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            if !labels_match(&sel, &labels) {
                return Err(format!(
                    "{}: selector does not match its pod template labels",
                    d.source
                ));
            }
            pod_labels.push(labels);
        }
    }
    let mut service_labels = Vec::new();
    for d in docs {
        match &d.object {
            Object::Service(s) => {
                let sel = s
                    .spec
                    .as_ref()
                    .and_then(|s| s.selector.clone())
                    .unwrap_or_default();
                if !pod_labels.iter().any(|l| labels_match(&sel, l)) {
                    return Err(format!("{}: Service selects no pods", d.source));
                }
                service_labels.push(s.metadata.labels.clone().unwrap_or_default());
            }
            Object::PodDisruptionBudget(p) => {
                let sel = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.selector.as_ref())
                    .and_then(|s| s.match_labels.clone());
                if !pod_labels
                    .iter()
                    .any(|l| labels_match(&sel.clone().unwrap_or_default(), l))
                {
                    return Err(format!("{}: PDB selects no pods", d.source));
                }
            }
            _ => {}
        }
    }
    for d in docs {
        if let Object::ServiceMonitor(m) = &d.object {
            let sel = m.spec.selector.match_labels.clone().unwrap_or_default();
            if !service_labels.iter().any(|l| labels_match(&sel, l)) {
                return Err(format!("{}: ServiceMonitor selects no Service", d.source));
            }
            let ports: Vec<String> = docs
                .iter()
                .filter_map(|d| match &d.object {
                    Object::Service(s) => {
                        Some(s.spec.as_ref()?.ports.clone()?.into_iter().filter_map(|p| p.name))
                    }
                    _ => None,
                })
                .flatten()
                .collect();
            for e in &m.spec.endpoints {
                if !ports.contains(&e.port) {
                    return Err(format!(
                        "{}: endpoint port {} is no Service port",
                        d.source, e.port
                    ));
                }
                if e.path.as_deref().unwrap_or("/metrics") != "/metrics" {
                    return Err(format!(
                        "{}: scrapes {:?}, the SDK serves /metrics",
                        d.source, e.path
                    ));
                }
            }
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct WorkerToml {
    queue: String,
    metrics_addr: String,
    grace_period_s: u64,
}

fn check_worker(dep: &Deployment, docs: &[Document]) -> Result<(), String> {
    let pod = dep
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .ok_or("no pod spec")?;
    let c = pod.containers.first().ok_or("no container")?;
    // The ConfigMap mounted at /etc/agentscale carries config.toml.
    let mounts = c.volume_mounts.clone().unwrap_or_default();
    let cfg_mount = mounts
        .iter()
        .find(|m| m.mount_path == "/etc/agentscale")
        .ok_or("no mount at /etc/agentscale")?;
    let vol = pod
        .volumes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name == cfg_mount.name)
        .ok_or("config mount names no volume")?;
    let cm_name = vol
        .config_map
        .map(|c| c.name)
        .ok_or("/etc/agentscale is not a ConfigMap")?;
    let cm = docs
        .iter()
        .find_map(|d| match &d.object {
            Object::ConfigMap(c) if c.metadata.name.as_deref() == Some(&cm_name) => Some(c),
            _ => None,
        })
        .ok_or(format!("ConfigMap {cm_name} not in the manifests"))?;
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get("config.toml"))
        .ok_or("ConfigMap has no config.toml")?;
    let cfg: WorkerToml = toml::from_str(text).map_err(|e| format!("config.toml: {e}"))?;
    let _ = &cfg.queue;
    let port: i32 = cfg
        .metrics_addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or("metrics_addr has no port")?;
    // The Secret file named by AGENTSCALE_REDIS_URL_FILE is mounted.
    let env = c.env.clone().unwrap_or_default();
    let url_file = env
        .iter()
        .find(|e| e.name == "AGENTSCALE_REDIS_URL_FILE")
        .and_then(|e| e.value.clone())
        .ok_or("no AGENTSCALE_REDIS_URL_FILE")?;
    let secret_mount = mounts
        .iter()
        .find(|m| url_file.starts_with(&format!("{}/", m.mount_path)))
        .ok_or("AGENTSCALE_REDIS_URL_FILE is under no mount")?;
    let svol = pod
        .volumes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name == secret_mount.name);
    let secret = svol
        .and_then(|v| v.secret)
        .ok_or("the URL file's volume is not a Secret")?;
    let file = url_file.rsplit('/').next().unwrap_or_default();
    let key_ok = secret.items.unwrap_or_default().iter().any(|i| i.path == file);
    if !key_ok {
        return Err(format!("Secret volume has no item {file}"));
    }
    // Ports and probes: the container port is the exporter's, probes hit /healthz and /readyz.
    let ports = c.ports.clone().unwrap_or_default();
    let metrics = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .ok_or("no metrics port")?;
    if metrics.container_port != port {
        return Err(format!(
            "containerPort {} != metrics_addr port {port}",
            metrics.container_port
        ));
    }
    for (probe, path) in [(&c.liveness_probe, "/healthz"), (&c.readiness_probe, "/readyz")] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .ok_or(format!("no {path} probe"))?;
        if get.path.as_deref() != Some(path) {
            return Err(format!("probe path {:?}, expected {path}", get.path));
        }
        let ok = match &get.port {
            IntOrString::Int(p) => *p == port,
            IntOrString::String(n) => n == "metrics",
        };
        if !ok {
            return Err(format!(
                "{path} probe port {:?} is not the metrics port",
                get.port
            ));
        }
    }
    // Grace periods: the kubelet must wait longer than the worker drains.
    let tgps = pod.termination_grace_period_seconds.unwrap_or(30);
    if tgps <= cfg.grace_period_s as i64 {
        return Err(format!(
            "terminationGracePeriodSeconds {tgps} <= worker grace period {}",
            cfg.grace_period_s
        ));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AdapterConfig {
    external_rules: Vec<AdapterRule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AdapterRule {
    series_query: String,
    resources: serde_yaml_ng::Value,
    name: AdapterName,
    metrics_query: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdapterName {
    matches: String,
    #[serde(rename = "as")]
    as_: String,
}

fn check_autoscaling(docs: &[Document]) -> Result<(), String> {
    let exported = sdk_metric_names();
    // Exactly one autoscaler on the worker, naming an existing Deployment.
    let scaler = autoscaler_for(docs, "agentscale-worker").map_err(|e| e.to_string())?;
    if let Autoscaler::Hpa(h) = &scaler {
        if h.min_replicas != 2
            || h.max_replicas != 20
            || h.target_average_milli != 10_000
            || h.behavior.is_none()
        {
            return Err(format!(
                "HPA is not the designed 2..20 at AverageValue 10 with behavior: {h:?}"
            ));
        }
        // The adapter must turn an exported SDK metric into the HPA's metric name.
        let adapter = docs
            .iter()
            .find_map(|d| match &d.object {
                Object::ConfigMap(c) => c.data.as_ref()?.get("config.yaml").cloned(),
                _ => None,
            })
            .ok_or("HPA overlay without Prometheus Adapter rules")?;
        let cfg: AdapterConfig =
            serde_yaml_ng::from_str(&adapter).map_err(|e| format!("adapter config: {e}"))?;
        let produced: Vec<String> = cfg
            .external_rules
            .iter()
            .flat_map(|r| {
                let re = regex::Regex::new(&r.name.matches).unwrap();
                let series = r.series_query.split('{').next().unwrap_or_default().to_string();
                let _ = (&r.resources, &r.metrics_query);
                exported
                    .iter()
                    .filter(|m| **m == series && re.is_match(m))
                    .map(|m| re.replace(m, r.name.as_.as_str()).into_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        if !produced.contains(&h.metric) {
            return Err(format!(
                "adapter produces {produced:?}, the HPA asks for {}",
                h.metric
            ));
        }
        for r in &cfg.external_rules {
            if !r.metrics_query.contains("max") {
                return Err("adapter must aggregate the queue-wide depth with max, not sum".into());
            }
        }
    }
    for d in docs {
        if let Object::ScaledObject(so) = &d.object {
            for t in &so.spec.triggers {
                if t.type_ == "prometheus" {
                    let q = t.metadata.get("query").cloned().unwrap_or_default();
                    if !exported.iter().any(|m| q.contains(m.as_str())) {
                        return Err(format!(
                            "{}: prometheus query {q:?} names no SDK metric",
                            d.source
                        ));
                    }
                }
                if let Some(a) = &t.authentication_ref {
                    let found = docs.iter().any(|d| matches!(&d.object, Object::TriggerAuthentication(x) if x.metadata.name.as_deref() == Some(&a.name)));
                    if !found {
                        return Err(format!("{}: authenticationRef {} not found", d.source, a.name));
                    }
                }
            }
            let target = &so.spec.scale_target_ref.name;
            if !docs.iter().any(
                |d| matches!(&d.object, Object::Deployment(x) if x.metadata.name.as_deref() == Some(target)),
            ) {
                return Err(format!("{}: scaleTargetRef {target} not found", d.source));
            }
        }
        if let Object::HorizontalPodAutoscaler(h) = &d.object {
            let target = &h.spec.as_ref().ok_or("hpa without spec")?.scale_target_ref.name;
            if !docs.iter().any(
                |d| matches!(&d.object, Object::Deployment(x) if x.metadata.name.as_deref() == Some(target)),
            ) {
                return Err(format!("{}: scaleTargetRef {target} not found", d.source));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- positive

#[test]
fn every_overlay_passes_every_check() {
    for o in ["hpa", "keda-redis", "keda-prometheus"] {
        let docs = overlay(o);
        assert!(docs.len() >= 9, "{o}: {} objects", docs.len());
        check(&docs).unwrap_or_else(|e| panic!("{o}: {e}"));
    }
}

#[test]
fn base_alone_has_no_autoscaler_and_kafka_scaledobject_parses() {
    let base = manifest::load_kustomization(root().join("deploy/base")).unwrap();
    assert!(autoscaler_for(&base, "agentscale-worker").is_err());
    let text = std::fs::read_to_string(root().join("deploy/keda-kafka/scaledobject.yaml")).unwrap();
    let docs = manifest::parse_documents(&text, "kafka").unwrap();
    let Object::ScaledObject(so) = &docs[0].object else {
        panic!("not a ScaledObject")
    };
    let spec = agentscale_autoscale::keda::KedaSpec::from_scaled_object(so).unwrap();
    assert_eq!(spec.max_replicas, 6);
    assert_eq!(spec.triggers[0].target_milli, 10_000);
}

#[test]
fn triton_runs_on_the_gpu_pool() {
    let docs = overlay("hpa");
    let triton = docs
        .iter()
        .find_map(|d| match &d.object {
            Object::Deployment(x) if x.metadata.name.as_deref() == Some("agentscale-triton") => Some(x),
            _ => None,
        })
        .unwrap();
    let pod = triton.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
    assert_eq!(limits.get("nvidia.com/gpu").map(|q| q.0.as_str()), Some("1"));
    let tol = pod.tolerations.as_ref().unwrap();
    assert!(tol
        .iter()
        .any(|t| t.key.as_deref() == Some("nvidia.com/gpu") && t.effect.as_deref() == Some("NoSchedule")));
    assert!(pod.affinity.as_ref().unwrap().node_affinity.is_some());
}

/// The probe paths of the manifest answer on the real exporter (200 or
/// 503, never 404), and `/metrics` serves the families the HPA scales on.
#[tokio::test]
async fn probe_paths_are_served_by_the_real_exporter() {
    let docs = overlay("hpa");
    let worker = docs
        .iter()
        .find_map(|d| match &d.object {
            Object::Deployment(x) if x.metadata.name.as_deref() == Some("agentscale-worker") => {
                Some(x.clone())
            }
            _ => None,
        })
        .unwrap();
    let c = &worker.spec.unwrap().template.spec.unwrap().containers[0];
    let mut paths = vec!["/metrics".to_string()];
    for p in [&c.liveness_probe, &c.readiness_probe] {
        paths.push(
            p.as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .clone()
                .unwrap(),
        );
    }
    let exporter = Exporter::bind("127.0.0.1:0", Metrics::new()).await.unwrap();
    let addr = exporter.local_addr();
    for path in paths {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get(&path)
            .header("host", "localhost")
            .body(http_body_util::Empty::<bytes_t::Bytes>::new())
            .unwrap();
        let status = send.send_request(req).await.unwrap().status().as_u16();
        assert!(status == 200 || status == 503, "{path} answered {status}");
    }
    exporter.shutdown().await;
}

// hyper's body type re-exported bytes.
mod bytes_t {
    pub use hyper::body::Bytes;
}

// ---------------------------------------------------------------- negative

fn mutate(o: &str, f: impl Fn(&mut Vec<Document>)) -> Result<(), String> {
    let mut docs = overlay(o);
    f(&mut docs);
    check(&docs)
}

fn worker_mut(docs: &mut [Document]) -> &mut Deployment {
    docs.iter_mut()
        .find_map(|d| match &mut d.object {
            Object::Deployment(x) if x.metadata.name.as_deref() == Some("agentscale-worker") => {
                Some(&mut **x)
            }
            _ => None,
        })
        .unwrap()
}

#[test]
fn rejects_unknown_fields_in_core_and_crd_kinds() {
    let dep = std::fs::read_to_string(root().join("deploy/base/worker-deployment.yaml")).unwrap();
    let bad = dep.replace("terminationGracePeriodSeconds:", "terminationGracePeriodSecond:");
    let err = manifest::parse_documents(&bad, "dep").unwrap_err().to_string();
    assert!(err.contains("terminationGracePeriodSecond"), "{err}");
    let hpa = std::fs::read_to_string(root().join("deploy/overlays/hpa/hpa.yaml")).unwrap();
    let bad = hpa.replace("  minReplicas: 2", "  minReplicas: 2\n  minReplica: 3");
    let err = manifest::parse_documents(&bad, "hpa").unwrap_err().to_string();
    assert!(err.contains("minReplica"), "{err}");
    let so =
        std::fs::read_to_string(root().join("deploy/overlays/keda-prometheus/scaledobject.yaml")).unwrap();
    let bad = so.replace("  cooldownPeriod: 300", "  cooldownPeriod: 300\n  coolDown: 1");
    assert!(manifest::parse_documents(&bad, "so").is_err());
    let sm = std::fs::read_to_string(root().join("deploy/base/servicemonitor.yaml")).unwrap();
    let bad = sm.replace("interval: 15s", "intervall: 15s");
    assert!(manifest::parse_documents(&bad, "sm").is_err());
}

#[test]
fn rejects_selector_mismatches() {
    let e = mutate("hpa", |d| {
        let w = worker_mut(d);
        w.spec
            .as_mut()
            .unwrap()
            .selector
            .match_labels
            .as_mut()
            .unwrap()
            .insert("x".into(), "y".into());
    });
    assert!(e.unwrap_err().contains("selector"));
    let e = mutate("hpa", |d| {
        for doc in d.iter_mut() {
            if let Object::ServiceMonitor(m) = &mut doc.object {
                m.spec.endpoints[0].port = "web".into();
            }
        }
    });
    assert!(e.unwrap_err().contains("port web"));
}

#[test]
fn rejects_wrong_ports_and_probe_paths() {
    let e = mutate("hpa", |d| {
        let c = &mut worker_mut(d)
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0];
        c.readiness_probe
            .as_mut()
            .unwrap()
            .http_get
            .as_mut()
            .unwrap()
            .path = Some("/ready".into());
    });
    assert!(e.unwrap_err().contains("/readyz"));
    let e = mutate("hpa", |d| {
        let c = &mut worker_mut(d)
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0];
        c.ports.as_mut().unwrap()[0].container_port = 8080;
    });
    assert!(e.unwrap_err().contains("containerPort"));
}

#[test]
fn rejects_grace_period_inversion() {
    let e = mutate("hpa", |d| {
        worker_mut(d)
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .termination_grace_period_seconds = Some(20);
    });
    assert!(e.unwrap_err().contains("terminationGracePeriodSeconds"));
}

#[test]
fn rejects_metric_name_and_target_mismatches() {
    let e = mutate("hpa", |d| {
        for doc in d.iter_mut() {
            if let Object::HorizontalPodAutoscaler(h) = &mut doc.object {
                h.spec.as_mut().unwrap().metrics.as_mut().unwrap()[0]
                    .external
                    .as_mut()
                    .unwrap()
                    .metric
                    .name = "queue_depth".into();
            }
        }
    });
    assert!(e.unwrap_err().contains("adapter produces"));
    let e = mutate("hpa", |d| {
        for doc in d.iter_mut() {
            if let Object::HorizontalPodAutoscaler(h) = &mut doc.object {
                h.spec.as_mut().unwrap().scale_target_ref.name = "agentscale-wrker".into();
            }
        }
    });
    assert!(e.is_err());
    let e = mutate("keda-prometheus", |d| {
        for doc in d.iter_mut() {
            if let Object::ScaledObject(s) = &mut doc.object {
                s.spec.triggers[0]
                    .metadata
                    .insert("query".into(), "max(agentscale_queue_depth)".into());
            }
        }
    });
    assert!(e.unwrap_err().contains("names no SDK metric"));
}

#[test]
fn rejects_two_autoscalers_on_one_deployment() {
    let mut docs = overlay("hpa");
    docs.extend(
        overlay("keda-prometheus")
            .into_iter()
            .filter(|d| d.object.kind() == "ScaledObject"),
    );
    let err = check(&docs).unwrap_err();
    assert!(err.contains("never both"), "{err}");
}

// ---------------------------------------------------------------- Dockerfile

struct Instr {
    op: String,
    args: String,
}

/// Minimal Dockerfile reader: joins `\` continuations, drops comments.
fn dockerfile(text: &str) -> Vec<Instr> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.starts_with('#') || t.is_empty()) {
            continue;
        }
        if let Some(s) = t.strip_suffix('\\') {
            cur.push_str(s);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        let (op, args) = cur.split_once(' ').unwrap_or((&cur, ""));
        out.push(Instr {
            op: op.to_uppercase(),
            args: args.trim().to_string(),
        });
        cur.clear();
    }
    out
}

/// The workspace members named in the root `Cargo.toml`.
fn workspace_members() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let manifest: toml::Value = toml::from_str(&text).unwrap();
    manifest["workspace"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect()
}

fn check_dockerfile(text: &str, port: u16) -> Result<(), String> {
    let ins = dockerfile(text);
    // The dependency layer copies each member's manifest before the sources;
    // a member left out makes `cargo fetch --locked` fail in the image build.
    for member in workspace_members() {
        let line = format!("{member}/Cargo.toml {member}/");
        if !ins.iter().any(|i| i.op == "COPY" && i.args.trim() == line) {
            return Err(format!("no `COPY {line}` for workspace member {member}"));
        }
    }
    let froms: Vec<&Instr> = ins.iter().filter(|i| i.op == "FROM").collect();
    if froms.len() < 2 {
        return Err("not multi-stage".into());
    }
    for f in &froms {
        let image = f
            .args
            .split_whitespace()
            .find(|w| !w.starts_with("--"))
            .unwrap_or_default();
        let (name, tag) = match image.split_once('@') {
            Some((_, digest)) if digest.starts_with("sha256:") => continue,
            _ => image.rsplit_once(':').ok_or(format!("FROM {image}: no tag"))?,
        };
        if tag == "latest" || !tag.chars().any(|c| c.is_ascii_digit()) || name.contains('/') && tag.is_empty()
        {
            return Err(format!("FROM {image}: tag is not a pinned version"));
        }
    }
    let last = ins.iter().rposition(|i| i.op == "FROM").unwrap_or(0);
    let final_stage = &ins[last..];
    let user = final_stage
        .iter()
        .rfind(|i| i.op == "USER")
        .ok_or("no USER in the final stage")?;
    let uid = user.args.split(':').next().unwrap_or_default();
    if uid == "root" || uid == "0" {
        return Err("final stage runs as root".into());
    }
    for i in final_stage
        .iter()
        .filter(|i| i.op == "ENTRYPOINT" || i.op == "CMD")
    {
        let v: Vec<String> =
            serde_json::from_str(&i.args).map_err(|_| format!("{} is not exec form", i.op))?;
        if v.is_empty() {
            return Err(format!("{} is empty", i.op));
        }
    }
    if !final_stage.iter().any(|i| i.op == "ENTRYPOINT") {
        return Err("no ENTRYPOINT".into());
    }
    let exposed: Vec<u16> = final_stage
        .iter()
        .filter(|i| i.op == "EXPOSE")
        .flat_map(|i| {
            i.args
                .split_whitespace()
                .filter_map(|p| p.split('/').next()?.parse().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    if exposed != [port] {
        return Err(format!("EXPOSE {exposed:?}, the exporter listens on {port}"));
    }
    let builds: Vec<&Instr> = ins
        .iter()
        .filter(|i| i.op == "RUN" && i.args.contains("cargo build"))
        .collect();
    if builds.is_empty() || builds.iter().any(|b| !b.args.contains("--locked")) {
        return Err("every cargo build must use --locked".into());
    }
    Ok(())
}

fn metrics_port() -> u16 {
    let docs = overlay("hpa");
    let cm = docs
        .iter()
        .find_map(|d| match &d.object {
            Object::ConfigMap(c) if c.metadata.name.as_deref() == Some("agentscale-worker-config") => {
                c.data.as_ref()?.get("config.toml").cloned()
            }
            _ => None,
        })
        .unwrap();
    let cfg: WorkerToml = toml::from_str(&cm).unwrap();
    cfg.metrics_addr.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn dockerfile_is_pinned_non_root_exec_form_and_locked() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    check_dockerfile(&text, metrics_port()).unwrap();
}

#[test]
fn dockerfile_check_rejects_each_violation() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let port = metrics_port();
    let cases = [
        text.replace("debian:bookworm-20251229-slim", "debian:latest"),
        text.replace("rust:1.95.0-slim-bookworm", "rust"),
        text.replace("USER 65532:65532", "USER root"),
        text.replace(
            "ENTRYPOINT [\"/usr/local/bin/agentscale-worker\"]",
            "ENTRYPOINT /usr/local/bin/agentscale-worker",
        ),
        text.replace("EXPOSE 9090", "EXPOSE 8080"),
        text.replace("&& cargo build --locked", "&& cargo build"),
        text.replace("COPY benches/Cargo.toml benches/\n", ""),
    ];
    for (i, c) in cases.iter().enumerate() {
        assert_ne!(c, &text, "case {i} did not change the Dockerfile");
        assert!(check_dockerfile(c, port).is_err(), "case {i} passed");
    }
}
