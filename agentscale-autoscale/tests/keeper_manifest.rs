//! The queue keeper in `deploy/base/queue-keeper.yaml`: every overlay runs
//! it next to the workers, it is never scaled by the autoscaler, it runs the
//! binary the Dockerfile installs on the workers' queue (same ConfigMap and
//! Secret), Prometheus scrapes it, and every autoscaler scales on the metric
//! it exports (`agentscale_task_queue_due`). Each check has a negative case.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use agentscale_autoscale::autoscaler_for;
use agentscale_autoscale::manifest::{self, Document, Object};
use agentscale_core::metrics::Metrics;
use agentscale_core::Depth;
use k8s_openapi::api::apps::v1::Deployment;

const KEEPER: &str = "agentscale-queue-keeper";
const DUE: &str = "agentscale_task_queue_due";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn overlay(name: &str) -> Vec<Document> {
    manifest::load_kustomization(root().join("deploy/overlays").join(name)).unwrap()
}

fn deployment<'a>(docs: &'a [Document], name: &str) -> Option<&'a Deployment> {
    docs.iter().find_map(|d| match &d.object {
        Object::Deployment(x) if x.metadata.name.as_deref() == Some(name) => Some(&**x),
        _ => None,
    })
}

fn volume_sources(dep: &Deployment) -> Vec<String> {
    let pod = dep.spec.as_ref().and_then(|s| s.template.spec.as_ref()).unwrap();
    pod.volumes
        .iter()
        .flatten()
        .filter_map(|v| {
            v.config_map
                .as_ref()
                .map(|c| format!("configmap/{}", c.name))
                .or_else(|| {
                    v.secret
                        .as_ref()
                        .and_then(|s| s.secret_name.clone())
                        .map(|s| format!("secret/{s}"))
                })
        })
        .collect()
}

/// Every keeper check over one overlay; returns the first violation.
fn check_keeper(docs: &[Document], dockerfile: &str) -> Result<(), String> {
    let keeper = deployment(docs, KEEPER).ok_or("no queue keeper Deployment")?;
    let worker = deployment(docs, "agentscale-worker").ok_or("no worker Deployment")?;
    let spec = keeper.spec.as_ref().ok_or("keeper without spec")?;
    if spec.replicas.unwrap_or(1) < 1 {
        return Err("the keeper must always run (replicas >= 1)".into());
    }
    if autoscaler_for(docs, KEEPER).is_ok() {
        return Err("an autoscaler targets the keeper; it must stay up at zero workers".into());
    }
    let pod = spec.template.spec.as_ref().ok_or("keeper without pod spec")?;
    let c = pod.containers.first().ok_or("keeper without container")?;
    let binary = c
        .command
        .as_ref()
        .and_then(|v| v.first())
        .ok_or("keeper without command")?;
    if !dockerfile.contains("/usr/local/bin/agentscale-queue-keeper")
        || !binary.ends_with("agentscale-queue-keeper")
    {
        return Err(format!(
            "keeper runs {binary}, which the Dockerfile does not install"
        ));
    }
    let worker_c = &worker
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    if c.image != worker_c.image {
        return Err("keeper and workers must run the same image".into());
    }
    let (kv, wv) = (volume_sources(keeper), volume_sources(worker));
    if kv != wv {
        return Err(format!(
            "keeper mounts {kv:?}, the workers {wv:?}: not the same queue config"
        ));
    }
    let port = c
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .ok_or("keeper exposes no metrics port")?;
    let worker_port = worker_c
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("metrics"));
    if Some(port.container_port) != worker_port.map(|p| p.container_port) {
        return Err("keeper metrics port differs from the workers' (same config.toml metrics_addr)".into());
    }
    // Prometheus scrapes it: a Service selecting the keeper pods, and a
    // ServiceMonitor selecting that Service.
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let service = docs
        .iter()
        .find_map(|d| match &d.object {
            Object::Service(s) => {
                let sel = s.spec.as_ref()?.selector.clone()?;
                (!sel.is_empty() && sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v))).then_some(s)
            }
            _ => None,
        })
        .ok_or("no Service selects the keeper pods")?;
    let svc_labels = service.metadata.labels.clone().unwrap_or_default();
    let scraped = docs.iter().any(|d| match &d.object {
        Object::ServiceMonitor(m) => {
            let sel = m.spec.selector.match_labels.clone().unwrap_or_default();
            !sel.is_empty() && sel.iter().all(|(k, v)| svc_labels.get(k) == Some(v))
        }
        _ => false,
    });
    if !scraped {
        return Err("no ServiceMonitor scrapes the keeper's Service".into());
    }
    Ok(())
}

/// The metric the Prometheus-based autoscalers read is the due depth.
fn check_scales_on_due(docs: &[Document]) -> Result<(), String> {
    for d in docs {
        match &d.object {
            Object::ScaledObject(so) => {
                for t in so.spec.triggers.iter().filter(|t| t.type_ == "prometheus") {
                    let q = t.metadata.get("query").cloned().unwrap_or_default();
                    if !q.contains(&format!("{DUE}{{")) {
                        return Err(format!(
                            "{}: prometheus trigger does not scale on {DUE}: {q}",
                            d.source
                        ));
                    }
                }
            }
            Object::ConfigMap(c) => {
                if let Some(cfg) = c.data.as_ref().and_then(|m| m.get("config.yaml")) {
                    if !cfg.contains(&format!("seriesQuery: '{DUE}{{")) {
                        return Err(format!("{}: adapter rule does not read {DUE}", d.source));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[test]
fn every_overlay_runs_the_keeper_and_scales_on_the_due_depth() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    for o in ["hpa", "keda-redis", "keda-prometheus"] {
        let docs = overlay(o);
        check_keeper(&docs, &dockerfile).unwrap_or_else(|e| panic!("{o}: {e}"));
        check_scales_on_due(&docs).unwrap_or_else(|e| panic!("{o}: {e}"));
    }
}

#[test]
fn the_due_metric_is_what_the_sdk_exports() {
    let m = Metrics::new();
    let depth = Depth {
        ready: 1,
        in_flight: 2,
        delayed: 7,
        due_delayed: 3,
        ..Depth::default()
    };
    m.record_depth("agents", &depth);
    let text = m.encode();
    assert!(text.contains(&format!("{DUE}{{queue=\"agents\"}} 6")), "{text}");
    // Not-yet-due delayed tasks are not counted; the plain depth stays ready + in flight.
    assert!(
        text.contains("agentscale_task_queue_depth{queue=\"agents\"} 3"),
        "{text}"
    );
}

fn mutated(o: &str, f: impl Fn(&mut Vec<Document>)) -> Result<(), String> {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let mut docs = overlay(o);
    f(&mut docs);
    check_keeper(&docs, &dockerfile).and_then(|()| check_scales_on_due(&docs))
}

fn keeper_mut(docs: &mut [Document]) -> &mut Deployment {
    docs.iter_mut()
        .find_map(|d| match &mut d.object {
            Object::Deployment(x) if x.metadata.name.as_deref() == Some(KEEPER) => Some(&mut **x),
            _ => None,
        })
        .unwrap()
}

#[test]
fn keeper_checks_reject_each_violation() {
    let e = mutated("keda-prometheus", |d| d.retain(|x| x.object.name() != KEEPER));
    assert!(e.unwrap_err().contains("no queue keeper"));
    let e = mutated("keda-redis", |d| {
        keeper_mut(d).spec.as_mut().unwrap().replicas = Some(0)
    });
    assert!(e.unwrap_err().contains("always run"));
    let e = mutated("hpa", |d| {
        let c = &mut keeper_mut(d)
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0];
        c.command = Some(vec!["/usr/local/bin/agentscale-worker".into()]);
    });
    assert!(e.unwrap_err().contains("does not install"));
    let e = mutated("hpa", |d| {
        let pod = keeper_mut(d)
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap();
        pod.volumes.as_mut().unwrap().retain(|v| v.config_map.is_none());
    });
    assert!(e.unwrap_err().contains("not the same queue config"));
    let e = mutated("keda-prometheus", |d| {
        d.retain(|x| !(x.object.kind() == "ServiceMonitor" && x.object.name() == KEEPER))
    });
    assert!(e.unwrap_err().contains("ServiceMonitor"));
    let e = mutated("keda-prometheus", |d| {
        for doc in d.iter_mut() {
            if let Object::ScaledObject(s) = &mut doc.object {
                s.spec.triggers[0].metadata.insert(
                    "query".into(),
                    "max(agentscale_task_queue_depth{queue=\"agents\"})".into(),
                );
            }
        }
    });
    assert!(e.unwrap_err().contains("does not scale on"));
}
