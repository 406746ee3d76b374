//! Docker cannot run on the development machines, so the compose file is
//! checked statically: every service the brief asks for is present, every
//! published port is bound to 127.0.0.1, and every service has a
//! healthcheck (one-shot jobs excepted: they exit, so they are checked
//! for a dependency on healthy services instead).

use std::collections::BTreeMap;

use serde_yaml::Value;

fn compose() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose.yml");
    let text = std::fs::read_to_string(path).expect("docker-compose.yml at the repo root");
    serde_yaml::from_str(&text).expect("docker-compose.yml parses as YAML")
}

fn services(doc: &Value) -> BTreeMap<String, Value> {
    doc["services"]
        .as_mapping()
        .expect("a services mapping")
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_owned(), v.clone()))
        .collect()
}

#[test]
fn has_the_pipeline_services() {
    let doc = compose();
    let s = services(&doc);
    for name in ["cockroachdb", "kafka", "minio", "sink", "marker", "purger"] {
        assert!(
            s.contains_key(name),
            "service {name} missing; have {:?}",
            s.keys()
        );
    }
    // Rangefeeds are a cluster setting, applied by the one-shot setup job
    // once the node is healthy.
    let setup = serde_yaml::to_string(&s["setup"]).unwrap();
    assert!(
        setup.contains("SET CLUSTER SETTING kv.rangefeed.enabled = true"),
        "CockroachDB must enable rangefeeds"
    );
    assert!(
        s["setup"]["depends_on"]["cockroachdb"]["condition"].as_str() == Some("service_healthy")
    );
    let kafka = serde_yaml::to_string(&s["kafka"]).unwrap();
    assert!(
        kafka.contains("KAFKA_PROCESS_ROLES") && kafka.contains("controller"),
        "Kafka must run in KRaft mode"
    );
    assert_eq!(
        s["sink"]["restart"].as_str(),
        Some("unless-stopped"),
        "the sink is long-running"
    );
    for one_shot in ["marker", "purger"] {
        assert_eq!(
            s[one_shot]["restart"].as_str(),
            Some("no"),
            "{one_shot} is one-shot"
        );
    }
}

#[test]
fn every_port_is_loopback_only() {
    let doc = compose();
    for (name, svc) in services(&doc) {
        for port in svc["ports"].as_sequence().cloned().unwrap_or_default() {
            let p = port
                .as_str()
                .unwrap_or_else(|| panic!("{name}: write ports as strings"));
            assert!(
                p.starts_with("127.0.0.1:"),
                "{name}: port {p} must be bound to 127.0.0.1"
            );
        }
    }
}

#[test]
fn long_running_services_have_healthchecks_and_jobs_wait_for_them() {
    let doc = compose();
    let s = services(&doc);
    for (name, svc) in &s {
        let one_shot = svc["restart"].as_str() == Some("no");
        if one_shot {
            let deps = svc["depends_on"]
                .as_mapping()
                .unwrap_or_else(|| panic!("{name}: depends_on missing"));
            for (dep, cond) in deps {
                let c = cond["condition"].as_str().unwrap_or("");
                assert!(
                    c == "service_healthy" || c == "service_completed_successfully",
                    "{name} must wait for {dep:?} to be healthy"
                );
            }
        } else {
            assert!(
                svc["healthcheck"]["test"].is_sequence(),
                "{name} needs a healthcheck"
            );
        }
    }
}
