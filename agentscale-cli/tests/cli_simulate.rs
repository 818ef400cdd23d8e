//! `agentscale autoscale simulate`: a trace through the shipped HPA, and bad
//! traces or manifests refused with exit code 2.

mod common;

use std::path::{Path, PathBuf};

use common::agentscale;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

const TRACE: &str = "# start_s,end_s,rate\n0,600,2\n600,1800,60\n1800,3600,5\n";

#[test]
fn the_shipped_hpa_scales_up_for_a_burst_and_back_down() {
    let dir = tempfile::tempdir().expect("tmp");
    let trace = write(&dir, "trace.csv", TRACE);
    let hpa = repo_file("deploy/overlays/hpa/hpa.yaml");
    let hpa = hpa.to_str().expect("utf-8 path");
    let r = agentscale(
        &[
            "--json",
            "autoscale",
            "simulate",
            "--trace",
            &trace,
            "--hpa",
            hpa,
            "--seed",
            "7",
        ],
        "",
    );
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["autoscaler"], "hpa");
    assert_eq!(j["target"], "agentscale-worker");
    assert_eq!(j["seconds"], 3600);
    let arrived = j["arrived"].as_u64().expect("arrived");
    assert_eq!(
        arrived,
        j["started"].as_u64().expect("started") + j["backlog_end"].as_u64().expect("end")
    );
    let desired: Vec<i64> = j["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .map(|s| s["desired"].as_i64().expect("desired"))
        .collect();
    let peak = desired.iter().copied().max().expect("samples");
    assert!(peak > 2, "the burst scaled up: {desired:?}");
    assert!(peak <= 20, "maxReplicas holds: {desired:?}");
    assert!(desired.iter().all(|d| *d >= 2), "minReplicas holds: {desired:?}");
    assert!(!j["events"].as_array().expect("events").is_empty());

    // Same seed, same run; the table names the autoscaler.
    let again = agentscale(
        &[
            "--json",
            "autoscale",
            "simulate",
            "--trace",
            &trace,
            "--hpa",
            hpa,
            "--seed",
            "7",
        ],
        "",
    );
    assert_eq!(again.json(), j);
    let table = agentscale(&["autoscale", "simulate", "--trace", &trace, "--hpa", hpa], "");
    assert_eq!(table.code, 0, "{table:?}");
    assert!(
        table.stdout.contains("hpa → agentscale-worker (2..20 replicas)"),
        "{table:?}"
    );
}

#[test]
fn bad_traces_are_refused_with_exit_2() {
    let dir = tempfile::tempdir().expect("tmp");
    let hpa = repo_file("deploy/overlays/hpa/hpa.yaml");
    let hpa = hpa.to_str().expect("utf-8 path");
    let cases = [
        ("gap.csv", "0,100,1\n200,300,1\n", "gap from 100 s to 200 s"),
        ("negative.csv", "0,100,-3\n", "must be finite and >= 0"),
        ("garbage.csv", "zero,ten,1\n", "expected start_s,end_s,rate"),
        ("empty.csv", "# nothing\n", "no segments"),
    ];
    for (name, text, why) in cases {
        let trace = write(&dir, name, text);
        let r = agentscale(&["autoscale", "simulate", "--trace", &trace, "--hpa", hpa], "");
        assert_eq!(r.code, 2, "{name}: {r:?}");
        assert!(r.stderr.contains(why), "{name}: {r:?}");
        assert!(r.stdout.is_empty(), "{name}: {r:?}");
    }
    let missing = dir.path().join("missing.csv");
    let r = agentscale(
        &[
            "autoscale",
            "simulate",
            "--trace",
            missing.to_str().expect("path"),
            "--hpa",
            hpa,
        ],
        "",
    );
    assert_eq!(r.code, 2, "{r:?}");
}

#[test]
fn bad_autoscaler_files_are_refused_with_exit_2() {
    let dir = tempfile::tempdir().expect("tmp");
    let trace = write(&dir, "trace.csv", TRACE);
    let shipped = std::fs::read_to_string(repo_file("deploy/overlays/hpa/hpa.yaml")).expect("hpa");
    let unknown = shipped.replace("  minReplicas: 2\n", "  minReplicas: 2\n  minReplica: 3\n");
    assert_ne!(unknown, shipped);
    let cases = [
        ("unknown-field.yaml", unknown.as_str(), "minReplica"),
        (
            "no-autoscaler.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n",
            "no HorizontalPodAutoscaler",
        ),
        ("not-yaml.yaml", "kind: [unclosed\n", "autoscaler file"),
    ];
    for (name, text, why) in cases {
        let hpa = write(&dir, name, text);
        let r = agentscale(
            &[
                "--json",
                "autoscale",
                "simulate",
                "--trace",
                &trace,
                "--hpa",
                &hpa,
            ],
            "",
        );
        assert_eq!(r.code, 2, "{name}: {r:?}");
        let err: serde_json::Value = serde_json::from_str(r.stderr.trim()).expect("JSON error");
        assert!(
            err["error"].as_str().expect("message").contains(why),
            "{name}: {r:?}"
        );
    }
}
