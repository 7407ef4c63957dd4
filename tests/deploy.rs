//! The deployment files in `contrib/` agree with the binary: the systemd unit (checked by
//! `systemd-analyze verify` where installed), the Dockerfile, and the Kubernetes example, whose
//! routes.toml and tenant files load, whose probes point at real endpoints and whose ports are
//! the ones routes.toml listens on. Schema validators (hadolint, kubeconform) run where they
//! are installed; nothing here needs a container engine or a cluster.

use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap()
}

/// Runs an optional validator if it is on this machine: `None` when it isn't.
fn validate(tool: &str, args: &[&str]) -> Option<std::process::Output> {
    match Command::new(tool).args(args).output() {
        Ok(output) => Some(output),
        Err(_) => {
            eprintln!("note: {tool} is not installed; the checks above stand alone");
            None
        }
    }
}

#[test]
fn the_systemd_unit_notifies_reloads_checks_first_and_runs_unprivileged() {
    let unit = read("contrib/sniroute.service");
    for line in [
        "Type=notify",
        "ExecStartPre=/usr/local/bin/sniroute check --config /etc/sniroute/routes.toml",
        "ExecStart=/usr/local/bin/sniroute --config /etc/sniroute/routes.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "DynamicUser=yes",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing {line}");
    }
    assert!(!unit.lines().any(|l| l.starts_with("User=root")));
    // systemd-analyze checks every directive, and that the commands exist: point them at the
    // binary this test run built.
    let dir = tempfile::tempdir().unwrap();
    let unit_path = dir.path().join("sniroute.service");
    std::fs::write(
        &unit_path,
        unit.replace("/usr/local/bin/sniroute", env!("CARGO_BIN_EXE_sniroute")),
    )
    .unwrap();
    if let Some(output) = validate(
        "systemd-analyze",
        &["verify", "--man=no", unit_path.to_str().unwrap()],
    ) {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let faults: Vec<&str> = stderr
            .lines()
            .filter(|line| line.contains("sniroute.service"))
            .collect();
        assert!(
            output.status.success() && faults.is_empty(),
            "systemd-analyze verify: {stderr}"
        );
    }
}

#[test]
fn the_dockerfile_builds_in_one_stage_and_runs_unprivileged_in_another() {
    let dockerfile = read("contrib/Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty() && !line.starts_with(' '))
        .collect();
    let stages: Vec<usize> = (0..instructions.len())
        .filter(|&at| instructions[at].starts_with("FROM "))
        .collect();
    assert_eq!(stages.len(), 2, "{instructions:?}");
    let (build, run) = instructions.split_at(stages[1]);
    assert!(build
        .iter()
        .any(|line| line.contains("cargo install --path . --locked")));
    assert!(run
        .iter()
        .any(|line| line.starts_with("COPY --from=build ")));
    assert!(run.contains(&"USER nonroot:nonroot"));
    assert!(run
        .iter()
        .any(|line| line.starts_with("ENTRYPOINT [\"/usr/local/bin/sniroute\"]")));
    if let Some(output) = validate("hadolint", &[repo("contrib/Dockerfile").to_str().unwrap()]) {
        assert!(
            output.status.success(),
            "hadolint: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
}

fn documents() -> Vec<Yaml> {
    YamlLoader::load_from_str(&read("contrib/kubernetes/sniroute.yaml")).unwrap()
}

fn kind<'a>(documents: &'a [Yaml], kind: &str) -> &'a Yaml {
    documents
        .iter()
        .find(|document| document["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn the_kubernetes_example_loads_and_its_probes_and_ports_are_real() {
    let documents = documents();
    // routes.toml and the tenant files load as sniroute loads them (the include pointed at
    // where this test writes the tenant ConfigMap's files).
    let routes = kind(&documents, "ConfigMap");
    let routes_toml = routes["data"]["routes.toml"].as_str().unwrap();
    let tenants = documents
        .iter()
        .filter(|document| document["kind"].as_str() == Some("ConfigMap"))
        .find(|document| document["metadata"]["name"].as_str() == Some("sniroute-tenants"))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tenant_dir = dir.path().join("sniroute.d");
    std::fs::create_dir(&tenant_dir).unwrap();
    for (name, text) in tenants["data"].as_hash().unwrap() {
        std::fs::write(
            tenant_dir.join(name.as_str().unwrap()),
            text.as_str().unwrap(),
        )
        .unwrap();
    }
    let config_path = dir.path().join("routes.toml");
    std::fs::write(
        &config_path,
        routes_toml.replace("/etc/sniroute.d/", "sniroute.d/"),
    )
    .unwrap();
    let config = sniroute::config::load(&config_path).unwrap();
    assert_eq!(config.routes.len(), 2);
    let metrics_port = i64::from(config.metrics.as_ref().unwrap().address.port());
    let listen_ports: Vec<i64> = config
        .listeners
        .iter()
        .map(|listen| i64::from(listen.address.port()))
        .collect();

    let deployment = kind(&documents, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let named_port = |name: &str| -> i64 {
        container["ports"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|port| port["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no container port {name}"))["containerPort"]
            .as_i64()
            .unwrap()
    };
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(
            named_port(get["port"].as_str().unwrap()),
            metrics_port,
            "{probe}"
        );
    }
    let mut container_ports: Vec<i64> = ["https", "http"].map(named_port).to_vec();
    container_ports.sort_unstable();
    let mut listen_ports = listen_ports;
    listen_ports.sort_unstable();
    assert_eq!(container_ports, listen_ports);
    // The mounts are where routes.toml and its include look.
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|mount| mount["mountPath"].as_str().unwrap())
        .collect();
    assert!(container["args"]
        .as_vec()
        .unwrap()
        .iter()
        .any(|arg| arg.as_str() == Some("/etc/sniroute/routes.toml")));
    assert_eq!(mounts, ["/etc/sniroute", "/etc/sniroute.d"]);
    assert!(routes_toml.contains("include = [\"/etc/sniroute.d/*.toml\"]"));
    // The grace period covers the preStop wait and the whole drain.
    let drain = config.timeouts.drain.as_secs() as i64;
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_i64()
        .unwrap();
    assert!(pod["terminationGracePeriodSeconds"].as_i64().unwrap() > pre_stop + drain);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"].as_bool(),
        Some(false)
    );

    // The Service sends both public ports to the container's, from a balancer sniroute trusts.
    let service = kind(&documents, "Service");
    assert_eq!(service["spec"]["type"].as_str(), Some("LoadBalancer"));
    for port in service["spec"]["ports"].as_vec().unwrap() {
        named_port(port["targetPort"].as_str().unwrap());
    }
    assert!(config
        .listeners
        .iter()
        .all(|listen| !listen.proxy_trusted.is_empty()));
    let labels = &deployment["spec"]["selector"]["matchLabels"];
    assert_eq!(&service["spec"]["selector"], labels);
    assert_eq!(
        &kind(&documents, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        labels
    );
    // The image's user holds no capability: it listens above 1024.
    assert!(listen_ports.iter().all(|&listen| listen > 1024));

    if let Some(output) = validate(
        "kubeconform",
        &[
            "-strict",
            "-summary",
            repo("contrib/kubernetes/sniroute.yaml").to_str().unwrap(),
        ],
    ) {
        assert!(
            output.status.success(),
            "kubeconform: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
}
