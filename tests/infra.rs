//! The deployment in `infra/`: the compose file validates with Docker Compose (no engine
//! needed to read it), and what it wires together agrees with the binary and with itself:
//! every variable it gives an agentnet service is one that service reads, the indexers
//! share one consumer group and every indexer and appview one appview key, health checks
//! and Prometheus targets point at the ports the services listen on, and the Grafana
//! dashboard charts only metrics the services export.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_yaml_ng::Value;

/// The Docker Compose command (`docker compose` or `docker-compose`), from
/// `AGENTNET_COMPOSE` or `infra/compose/setup.sh`, which installs one if needed.
fn compose() -> Vec<String> {
    let command = std::env::var("AGENTNET_COMPOSE").unwrap_or_else(|_| {
        let out = Command::new(support::root().join("infra/compose/setup.sh"))
            .output()
            .expect("run infra/compose/setup.sh");
        assert!(
            out.status.success(),
            "these tests need Docker Compose to read infra/compose.yaml, and \
             infra/compose/setup.sh could not install it: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    });
    command.split_whitespace().map(String::from).collect()
}

/// `compose -f infra/compose.yaml config` with `env` set (and nothing else from the
/// caller's environment that the file reads): its status, output and errors.
fn config(env: &[(&str, &str)]) -> (bool, String, String) {
    let compose = compose();
    let root = support::root();
    let mut cmd = Command::new(&compose[0]);
    cmd.args(&compose[1..])
        .args(["-f", "infra/compose.yaml", "config"])
        .current_dir(&root);
    for (name, _) in std::env::vars() {
        let read = [
            "AGENTNET_",
            "CLICKHOUSE_",
            "QDRANT_",
            "GRAFANA_",
            "PROMETHEUS_",
        ];
        if read.iter().any(|p| name.starts_with(p)) {
            cmd.env_remove(name);
        }
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("run docker compose config");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const SECRETS: [(&str, &str); 2] = [
    (
        "AGENTNET_APPVIEW_KEY",
        "c2VjcmV0LWtleS1mb3ItdGhlLWNvbXBvc2UtdGVzdA==",
    ),
    ("CLICKHOUSE_PASSWORD", "compose-test"),
];

/// The compose file as Docker Compose resolves it.
fn resolved() -> Value {
    let model = support::root().join("../shared/models/all-minilm-l6-v2");
    let model = model.to_str().expect("utf-8");
    let mut env = SECRETS.to_vec();
    env.push(("AGENTNET_MODEL_HOST_DIR", model));
    let (ok, out, err) = config(&env);
    assert!(
        ok,
        "docker compose config refused infra/compose.yaml: {err}"
    );
    serde_yaml_ng::from_str(&out).expect("compose config prints YAML")
}

fn services(config: &Value) -> &serde_yaml_ng::Mapping {
    config["services"].as_mapping().expect("services")
}

/// The agentnet services: name → (command, environment).
fn agentnet_services(config: &Value) -> BTreeMap<String, (String, BTreeMap<String, Value>)> {
    services(config)
        .iter()
        .filter(|(_, s)| {
            s["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("agentnet"))
        })
        .map(|(name, s)| {
            let command = s["command"][0].as_str().expect("a command").to_string();
            let env = s["environment"]
                .as_mapping()
                .expect("environment")
                .iter()
                .map(|(k, v)| (k.as_str().expect("name").to_string(), v.clone()))
                .collect();
            (name.as_str().expect("name").to_string(), (command, env))
        })
        .collect()
}

/// The variables `agentnet <command>` reads, from its help.
fn reads(command: &str) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_agentnet"))
        .args([command, "--help"])
        .output()
        .expect("agentnet --help");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    help.split("[env: ")
        .skip(1)
        .filter_map(|rest| {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

/// The port of a `host:port` listen address.
fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port")
}

#[test]
fn compose_file_validates_and_requires_its_secrets() {
    resolved();
    // Without the appview key (or the ClickHouse password) it refuses to start at all,
    // naming what is missing, instead of starting services that cannot read shared records.
    let (ok, _, err) = config(&[SECRETS[1]]);
    assert!(!ok, "compose config passed without AGENTNET_APPVIEW_KEY");
    assert!(err.contains("AGENTNET_APPVIEW_KEY"), "{err}");
    let (ok, _, err) = config(&[SECRETS[0]]);
    assert!(!ok, "compose config passed without CLICKHOUSE_PASSWORD");
    assert!(err.contains("CLICKHOUSE_PASSWORD"), "{err}");
}

#[test]
fn every_agentnet_service_gets_only_settings_it_reads() {
    let config = resolved();
    let services = agentnet_services(&config);
    let commands: BTreeSet<&str> = services.values().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        commands,
        BTreeSet::from(["appview", "indexer", "relay"]),
        "the deployment runs a relay, indexers and appviews"
    );
    for (name, (command, env)) in &services {
        let known = reads(command);
        assert!(
            !known.is_empty(),
            "no variables in `agentnet {command} --help`"
        );
        for (var, value) in env {
            assert!(
                known.contains(var),
                "{name}: `agentnet {command}` does not read {var}"
            );
            // An empty value counts as given (an empty host, an empty API key): leave the
            // variable out instead (null passes it on only when the caller set it).
            assert!(
                value.as_str() != Some(""),
                "{name}: {var} is set to an empty value"
            );
        }
    }
    let of = |command: &str| -> Vec<&BTreeMap<String, Value>> {
        services
            .values()
            .filter(|(c, _)| c == command)
            .map(|(_, e)| e)
            .collect()
    };
    let (indexers, appviews) = (of("indexer"), of("appview"));
    assert!(indexers.len() >= 2, "two indexers share the stream");
    assert!(appviews.len() >= 2, "two appviews serve the same stores");
    let same = |var: &str, who: &[&BTreeMap<String, Value>]| -> BTreeSet<String> {
        who.iter()
            .map(|e| e.get(var).and_then(Value::as_str).unwrap_or("").to_string())
            .collect()
    };
    let group = same("AGENTNET_INDEXER_KAFKA_GROUP", &indexers);
    assert!(
        group.len() == 1 && !group.contains(""),
        "indexers in one consumer group: {group:?}"
    );
    let both: Vec<_> = indexers.iter().chain(&appviews).copied().collect();
    for shared in [
        "AGENTNET_APPVIEW_KEY",
        "AGENTNET_APPVIEW_DID",
        "AGENTNET_CLICKHOUSE_URL",
        "AGENTNET_CLICKHOUSE_DATABASE",
        "AGENTNET_QDRANT_URL",
        "AGENTNET_QDRANT_COLLECTION",
        "AGENTNET_MODEL_DIR",
    ] {
        let values = same(shared, &both);
        assert!(
            values.len() == 1 && !values.contains(""),
            "every indexer and appview has one {shared}: {values:?}"
        );
    }
    // The relay publishes where the indexers consume.
    let relay = of("relay")[0];
    let topic = same("AGENTNET_INDEXER_KAFKA_TOPIC", &indexers);
    assert_eq!(
        topic,
        BTreeSet::from([relay["AGENTNET_RELAY_KAFKA_TOPIC"]
            .as_str()
            .expect("topic")
            .to_string()])
    );
}

#[test]
fn health_checks_and_prometheus_reach_the_ports_services_listen_on() {
    let config = resolved();
    let listens = |env: &BTreeMap<String, Value>| -> Option<u16> {
        [
            "AGENTNET_RELAY_LISTEN",
            "AGENTNET_APPVIEW_LISTEN",
            "AGENTNET_INDEXER_METRICS_LISTEN",
        ]
        .iter()
        .find_map(|v| env.get(*v)?.as_str().map(port_of))
    };
    let mut ports = BTreeMap::new();
    for (name, (_, env)) in agentnet_services(&config) {
        let port = listens(&env).unwrap_or_else(|| panic!("{name} serves no /metrics"));
        let check = services(&config)[name.as_str()]["healthcheck"]["test"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name} has no health check"))
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            check.contains(&format!("127.0.0.1:{port}/")),
            "{name}'s health check ({check}) is not on its port {port}"
        );
        ports.insert(name, port);
    }
    // Whatever a service waits for being healthy has a health check.
    for (name, service) in services(&config) {
        if let Some(deps) = service["depends_on"].as_mapping() {
            for (dep, how) in deps {
                let dep = dep.as_str().expect("name");
                assert!(
                    services(&config).contains_key(dep),
                    "{name:?} depends on {dep}, which is not a service"
                );
                if how["condition"].as_str() == Some("service_healthy") {
                    assert!(
                        !services(&config)[dep]["healthcheck"].is_null(),
                        "{name:?} waits for {dep} to be healthy, which has no health check"
                    );
                }
            }
        }
    }
    // Prometheus scrapes every agentnet service, on the port it serves /metrics.
    let prometheus: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(support::root().join("infra/prometheus/prometheus.yml"))
            .expect("prometheus.yml"),
    )
    .expect("prometheus.yml is YAML");
    let targets: BTreeSet<String> = prometheus["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .flat_map(|job| {
            job["static_configs"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|c| c["targets"].as_sequence().cloned().unwrap_or_default())
        .filter_map(|t| t.as_str().map(String::from))
        .collect();
    for (name, port) in &ports {
        assert!(
            targets.contains(&format!("{name}:{port}")),
            "Prometheus does not scrape {name}:{port} ({targets:?})"
        );
    }
    for target in &targets {
        let (host, _) = target.split_once(':').expect("host:port");
        assert!(
            services(&config).contains_key(host),
            "Prometheus scrapes {target}, which is not a service"
        );
    }
}

/// The `relay_…`, `indexer_…` and `appview_…` names in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let word = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_';
        if word(bytes[i]) && (i == 0 || !word(bytes[i - 1])) {
            let end = (i..bytes.len())
                .find(|&j| !word(bytes[j]))
                .unwrap_or(bytes.len());
            let name = &text[i..end];
            if ["relay_", "indexer_", "appview_"]
                .iter()
                .any(|p| name.starts_with(p))
            {
                names.insert(name.to_string());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

/// Every metric name the services' sources register (they are string literals there).
fn exported() -> BTreeSet<String> {
    fn walk(dir: &Path, names: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("read sources") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, names);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("source");
                for quoted in text.split('"').skip(1).step_by(2) {
                    names.extend(metric_names(quoted).into_iter().filter(|n| n == quoted));
                }
            }
        }
    }
    let mut names = BTreeSet::new();
    for service in ["relay", "indexer", "appview"] {
        walk(&support::root().join(service).join("src"), &mut names);
    }
    names
}

#[test]
fn grafana_charts_only_metrics_the_services_export() {
    let root = support::root();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("infra/grafana/dashboards/agentnet.json"))
            .expect("the dashboard"),
    )
    .expect("the dashboard is JSON");
    let exported = exported();
    assert!(exported.contains("relay_events_in_total"), "{exported:?}");
    let mut charted = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            assert_eq!(
                target["datasource"]["uid"], "agentnet-prometheus",
                "{expr}: the provisioned data source"
            );
            for name in metric_names(expr) {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|b| exported.contains(*b))
                    .unwrap_or(&name)
                    .to_string();
                assert!(
                    exported.contains(&base),
                    "the dashboard charts {name}, which no service exports"
                );
                charted.insert(base);
            }
        }
    }
    // What an operator watches first.
    for wanted in [
        "relay_events_in_total",
        "relay_events_out_total",
        "relay_events_dropped_total",
        "relay_host_lag_seconds",
        "relay_kafka_lag_events",
        "indexer_kafka_consumer_lag_events",
        "indexer_rows_total",
        "indexer_vectors_total",
        "indexer_embed_batch_texts",
        "appview_request_seconds",
    ] {
        assert!(
            charted.contains(wanted),
            "the dashboard has no chart of {wanted}"
        );
    }
    // Grafana loads it from where compose mounts the folder.
    let provider =
        std::fs::read_to_string(root.join("infra/grafana/provisioning/dashboards/agentnet.yaml"))
            .expect("the provider");
    assert!(provider.contains("path: /var/lib/grafana/dashboards"));
    let config = resolved();
    let mounts: Vec<String> = services(&config)["grafana"]["volumes"]
        .as_sequence()
        .expect("grafana's volumes")
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    assert!(
        mounts
            .iter()
            .any(|m| m.contains("infra/grafana/dashboards:/var/lib/grafana/dashboards")),
        "compose mounts the dashboards where the provider reads them: {mounts:?}"
    );
}
