//! `docker-compose.yml` and the `Dockerfile` checked against the real
//! binaries, so that neither drifts from the flags they use:
//!
//! - every command compose runs (service commands and health checks) names
//!   a subcommand and flags that the binary's `--help` lists, and the binary
//!   accepts it: `asyncgate-server … --print-config` validates the whole
//!   configuration (with the image's and the service's environment) without
//!   binding anything; `asyncgate … --help` parses every flag and value
//!   before printing the help;
//! - the Dockerfile builds and installs the binaries compose runs;
//! - every `depends_on` names a service, the default profile is one durable
//!   gateway with two workers, the `scale` profile is Redis with two gateway
//!   replicas and workers pointed at them;
//! - only the documented host ports are published, on loopback.
//!
//! `asyncgate` is this package's binary; `asyncgate-server` is found beside
//! it in the same target directory (`cargo test --workspace` builds every
//! binary before running any test).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_yaml_ng::Value;

/// Host ports the README documents for the compose file: the durable
/// gateway, then the two Redis replicas.
const DOCUMENTED_HOST_PORTS: [u16; 3] = [50051, 50052, 50053];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_owned()
}

// ---------------------------------------------------------------- binaries

/// What one `--help` lists.
struct Help {
    /// Long flags, with whether each takes a value.
    flags: BTreeMap<String, bool>,
    /// Subcommands (the "Commands:" section).
    commands: BTreeSet<String>,
    /// Environment variables (`[env: NAME=…]`).
    envs: BTreeSet<String>,
}

impl Help {
    fn parse(text: &str) -> Help {
        let mut flags = BTreeMap::new();
        let mut commands = BTreeSet::new();
        let mut in_commands = false;
        for line in text.lines() {
            let trimmed = line.trim_start();
            if line.starts_with("Commands:") {
                in_commands = true;
                continue;
            }
            if in_commands {
                match trimmed.split_whitespace().next() {
                    Some(name) if line.starts_with("  ") => {
                        commands.insert(name.to_owned());
                    }
                    _ => in_commands = false,
                }
                continue;
            }
            if !trimmed.starts_with('-') {
                continue;
            }
            let tokens: Vec<&str> = trimmed.split_whitespace().collect();
            for (i, token) in tokens.iter().enumerate() {
                let token = token.trim_end_matches(',');
                if !token.starts_with('-') {
                    break;
                }
                if let Some(long) = token.strip_prefix("--") {
                    let takes_value = tokens
                        .get(i + 1)
                        .is_some_and(|next| next.starts_with('<') || next.starts_with("[<"));
                    flags.insert(long.to_owned(), takes_value);
                }
            }
        }
        let envs = text
            .split("[env: ")
            .skip(1)
            .filter_map(|rest| rest.split(['=', ']']).next())
            .map(str::to_owned)
            .collect();
        Help {
            flags,
            commands,
            envs,
        }
    }
}

struct Binaries {
    server: PathBuf,
    cli: PathBuf,
}

impl Binaries {
    fn locate() -> Binaries {
        let cli = PathBuf::from(env!("CARGO_BIN_EXE_asyncgate"));
        let server =
            cli.with_file_name(format!("asyncgate-server{}", std::env::consts::EXE_SUFFIX));
        assert!(
            server.exists(),
            "{} is missing: build it with `cargo build -p asyncgate-server` \
             (`cargo test --workspace` builds it)",
            server.display()
        );
        Binaries { server, cli }
    }

    fn path(&self, program: &str) -> Option<&Path> {
        match program {
            "asyncgate-server" => Some(&self.server),
            "asyncgate" => Some(&self.cli),
            _ => None,
        }
    }

    fn help(&self, program: &str, subcommand: Option<&str>) -> Help {
        let path = self.path(program).expect("one of ours");
        let output = Command::new(path)
            .args(subcommand)
            .arg("--help")
            .output()
            .expect("the binary runs");
        assert!(
            output.status.success(),
            "{program} {subcommand:?} --help: {}",
            stderr(&output)
        );
        Help::parse(&String::from_utf8_lossy(&output.stdout))
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

// ---------------------------------------------------------------- compose

/// One service of the compose file (merge keys applied).
struct Service {
    name: String,
    image: Option<String>,
    built: bool,
    profiles: Vec<String>,
    command: Option<Vec<String>>,
    healthcheck: Option<Vec<String>>,
    depends_on: Vec<String>,
    ports: Vec<Value>,
    volumes: Vec<String>,
    environment: Vec<(String, String)>,
}

impl Service {
    /// The commands this service runs in the container, as argv.
    fn commands(&self) -> impl Iterator<Item = &Vec<String>> {
        self.command.iter().chain(&self.healthcheck)
    }

    /// Whether it runs in the default profile (no `profiles` key).
    fn default_profile(&self) -> bool {
        self.profiles.is_empty()
    }

    fn program(&self) -> Option<&str> {
        self.command
            .as_ref()
            .and_then(|argv| argv.first())
            .map(String::as_str)
    }

    /// The value of `--flag` in its command.
    fn flag(&self, flag: &str) -> Option<&str> {
        let argv = self.command.as_ref()?;
        let dashes = format!("--{flag}");
        argv.iter().enumerate().find_map(|(i, arg)| {
            if let Some(value) = arg.strip_prefix(&format!("{dashes}=")) {
                Some(value)
            } else if *arg == dashes {
                argv.get(i + 1).map(String::as_str)
            } else {
                None
            }
        })
    }
}

struct Compose {
    services: BTreeMap<String, Service>,
    volumes: BTreeSet<String>,
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::Sequence(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => panic!("not a string: {other:?}"),
            })
            .collect(),
        // Shell form; the file uses the exec form, but split plainly if not.
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Value::Null => Vec::new(),
        other => panic!("not a list of strings: {other:?}"),
    }
}

fn keys(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Mapping(map)) => map
            .keys()
            .map(|k| k.as_str().expect("a string key").to_owned())
            .collect(),
        Some(list) => strings(list),
        None => Vec::new(),
    }
}

impl Compose {
    fn load() -> Compose {
        let text = std::fs::read_to_string(root().join("docker-compose.yml"))
            .expect("docker-compose.yml at the workspace root");
        let mut doc: Value = serde_yaml_ng::from_str(&text).expect("valid YAML");
        doc.apply_merge().expect("merge keys resolve");
        let services = doc
            .get("services")
            .and_then(Value::as_mapping)
            .expect("a services mapping")
            .iter()
            .map(|(name, service)| {
                let name = name.as_str().expect("a service name").to_owned();
                let field = |key: &str| service.get(key);
                let healthcheck = field("healthcheck").and_then(|h| h.get("test")).map(|t| {
                    let argv = strings(t);
                    match argv.first().map(String::as_str) {
                        Some("CMD") => argv[1..].to_vec(),
                        Some("CMD-SHELL") => argv[1..]
                            .join(" ")
                            .split_whitespace()
                            .map(str::to_owned)
                            .collect(),
                        _ => argv,
                    }
                });
                let environment = match field("environment") {
                    Some(Value::Mapping(map)) => map
                        .iter()
                        .map(|(k, v)| {
                            let value = match v {
                                Value::String(s) => s.clone(),
                                Value::Null => String::new(),
                                other => serde_yaml_ng::to_string(other).unwrap().trim().to_owned(),
                            };
                            (k.as_str().expect("a variable name").to_owned(), value)
                        })
                        .collect(),
                    Some(list) => strings(list)
                        .into_iter()
                        .map(|pair| match pair.split_once('=') {
                            Some((k, v)) => (k.to_owned(), v.to_owned()),
                            None => (pair, String::new()),
                        })
                        .collect(),
                    None => Vec::new(),
                };
                let service = Service {
                    name: name.clone(),
                    image: field("image").and_then(Value::as_str).map(str::to_owned),
                    built: field("build").is_some(),
                    profiles: field("profiles").map(strings).unwrap_or_default(),
                    command: field("command").map(strings),
                    healthcheck,
                    depends_on: keys(field("depends_on")),
                    ports: field("ports")
                        .and_then(Value::as_sequence)
                        .cloned()
                        .unwrap_or_default(),
                    volumes: field("volumes").map(strings).unwrap_or_default(),
                    environment,
                };
                (name, service)
            })
            .collect();
        let volumes = keys(doc.get("volumes")).into_iter().collect();
        Compose { services, volumes }
    }

    /// Services that run our image (the one built from the Dockerfile).
    fn ours(&self) -> impl Iterator<Item = &Service> {
        let image: BTreeSet<_> = self
            .services
            .values()
            .filter(|s| s.built)
            .filter_map(|s| s.image.as_deref())
            .collect();
        self.services
            .values()
            .filter(move |s| s.built || s.image.as_deref().is_some_and(|i| image.contains(i)))
    }

    fn gateways(&self) -> impl Iterator<Item = &Service> {
        self.ours()
            .filter(|s| s.program() == Some("asyncgate-server"))
    }

    fn workers(&self) -> impl Iterator<Item = &Service> {
        self.ours().filter(|s| {
            s.program() == Some("asyncgate")
                && s.command
                    .as_ref()
                    .is_some_and(|argv| argv.iter().any(|a| a == "work"))
        })
    }
}

// ---------------------------------------------------------------- Dockerfile

/// The Dockerfile's instructions (continuation lines joined), per stage.
struct Dockerfile {
    stages: Vec<Vec<(String, String)>>,
}

impl Dockerfile {
    fn load() -> Dockerfile {
        let text =
            std::fs::read_to_string(root().join("Dockerfile")).expect("a Dockerfile at the root");
        let mut joined = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            let line = line.trim();
            if current.is_empty() && (line.starts_with('#') || line.is_empty()) {
                continue;
            }
            if let Some(head) = line.strip_suffix('\\') {
                current.push_str(head);
                current.push(' ');
            } else if !line.starts_with('#') {
                current.push_str(line);
                joined.push(std::mem::take(&mut current));
            }
        }
        let mut stages: Vec<Vec<(String, String)>> = Vec::new();
        for instruction in joined {
            let (keyword, rest) = instruction.split_once(' ').unwrap_or((&instruction, ""));
            let keyword = keyword.to_ascii_uppercase();
            if keyword == "FROM" {
                stages.push(Vec::new());
            }
            if let Some(stage) = stages.last_mut() {
                stage.push((keyword, rest.trim().to_owned()));
            }
        }
        Dockerfile { stages }
    }

    fn final_stage(&self) -> &[(String, String)] {
        self.stages.last().expect("at least one FROM")
    }

    fn in_final(&self, keyword: &str) -> Vec<&str> {
        self.final_stage()
            .iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, rest)| rest.as_str())
            .collect()
    }

    /// The final image's environment (`ENV K=V …`).
    fn env(&self) -> Vec<(String, String)> {
        self.in_final("ENV")
            .into_iter()
            .flat_map(|rest| rest.split_whitespace())
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

// ---------------------------------------------------------------- checks

/// Checks the flags in `args` against `help` up to the first positional
/// argument, whose index it returns; flag values are skipped.
fn scan(help: &Help, args: &[String], whom: &str, problems: &mut Vec<String>) -> Option<usize> {
    let mut i = 0;
    while i < args.len() {
        let Some(flag) = args[i].strip_prefix("--") else {
            return Some(i);
        };
        let (name, inline_value) = match flag.split_once('=') {
            Some((name, _)) => (name, true),
            None => (flag, false),
        };
        match help.flags.get(name) {
            None => problems.push(format!("{whom}: --{name} is not in its --help")),
            Some(true) if !inline_value => i += 1,
            Some(_) => {}
        }
        i += 1;
    }
    None
}

/// Checks one argv of ours against the binary; returns the problems.
fn check_command(
    binaries: &Binaries,
    service: &Service,
    argv: &[String],
    env: &[(String, String)],
) -> Vec<String> {
    let whom = format!("service {}: {argv:?}", service.name);
    let mut problems = Vec::new();
    let Some(program) = argv.first() else {
        return vec![format!("{whom}: an empty command")];
    };
    let Some(path) = binaries.path(program) else {
        return vec![format!(
            "{whom}: runs {program}, not asyncgate-server or asyncgate"
        )];
    };
    // Where our arguments end: `--` starts the command `asyncgate work` runs.
    let (ours, tail) = match argv.iter().position(|a| a == "--") {
        Some(at) => (&argv[1..at], &argv[at + 1..]),
        None => (&argv[1..], &argv[..0]),
    };
    let top = binaries.help(program, None);
    let first_positional = scan(&top, ours, &whom, &mut problems);
    if program == "asyncgate-server" {
        if let Some(at) = first_positional {
            problems.push(format!("{whom}: unexpected argument {:?}", ours[at]));
        }
    } else {
        let Some(at) = first_positional else {
            return vec![format!("{whom}: no subcommand")];
        };
        let subcommand = &ours[at];
        if !top.commands.contains(subcommand) {
            problems.push(format!(
                "{whom}: `{subcommand}` is not a subcommand of asyncgate"
            ));
            return problems;
        }
        let help = binaries.help(program, Some(subcommand));
        let mut rest = &ours[at + 1..];
        // Positional arguments of the subcommand (such as a queue) are fine.
        while let Some(positional) = scan(&help, rest, &whom, &mut problems) {
            rest = &rest[positional + 1..];
        }
        if subcommand == "work" && tail.is_empty() {
            problems.push(format!("{whom}: `work` needs `-- CMD`"));
        }
    }

    // The real parse, values included.
    let mut run = Command::new(path);
    run.env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(ours);
    if program == "asyncgate-server" {
        // Validates the whole configuration and exits; binds nothing.
        run.arg("--print-config");
    } else {
        // clap checks every flag and value before it acts on --help.
        run.arg("--help");
    }
    let output = run.output().expect("the binary runs");
    if !output.status.success() {
        problems.push(format!("{whom}: rejected: {}", stderr(&output).trim()));
    }
    problems
}

#[test]
fn every_compose_command_uses_real_subcommands_flags_and_values() {
    let binaries = Binaries::locate();
    let compose = Compose::load();
    let image_env = Dockerfile::load().env();
    let mut known_env = binaries.help("asyncgate-server", None).envs;
    known_env.extend(binaries.help("asyncgate", None).envs);
    known_env.extend(binaries.help("asyncgate", Some("work")).envs);
    known_env.insert("RUST_LOG".to_owned());
    let mut problems = Vec::new();
    let mut checked = BTreeSet::new();
    for service in compose.ours() {
        // Explicit, so that this test sees everything that runs.
        if service.command.is_none() {
            problems.push(format!("service {}: no command", service.name));
        }
        for (name, _) in &service.environment {
            if !known_env.contains(name) {
                problems.push(format!("service {}: no binary reads {name}", service.name));
            }
        }
        let env: Vec<_> = image_env
            .iter()
            .chain(&service.environment)
            .cloned()
            .collect();
        for argv in service.commands() {
            problems.extend(check_command(&binaries, service, argv, &env));
            checked.insert(argv[0].clone());
        }
    }
    assert!(
        problems.is_empty(),
        "docker-compose.yml:\n{}",
        problems.join("\n")
    );
    assert_eq!(
        checked,
        BTreeSet::from(["asyncgate".to_owned(), "asyncgate-server".to_owned()]),
        "both binaries are exercised"
    );
}

#[test]
fn the_dockerfile_builds_and_installs_what_compose_runs() {
    let binaries = Binaries::locate();
    let dockerfile = Dockerfile::load();
    let compose = Compose::load();
    assert!(dockerfile.stages.len() >= 2, "a multi-stage build");

    let build = dockerfile.stages[..dockerfile.stages.len() - 1]
        .iter()
        .flatten()
        .filter(|(k, _)| k == "RUN")
        .map(|(_, rest)| rest.as_str())
        .find(|run| run.contains("cargo build"))
        .expect("a build stage runs cargo build");
    for needed in [
        "--release",
        "--locked",
        "-p asyncgate-server",
        "-p asyncgate-cli",
    ] {
        assert!(
            build.contains(needed),
            "cargo build without {needed}: {build}"
        );
    }
    let installed: BTreeSet<String> = dockerfile
        .in_final("COPY")
        .into_iter()
        .filter(|rest| rest.starts_with("--from="))
        .flat_map(|rest| {
            let words: Vec<&str> = rest.split_whitespace().skip(1).collect();
            let (dest, sources) = words.split_last().expect("COPY SRC… DEST");
            assert!(
                ["/usr/local/bin/", "/usr/bin/"].contains(dest),
                "binaries go to a directory on PATH: {rest}"
            );
            sources
                .iter()
                .map(|s| s.rsplit('/').next().unwrap_or(s).to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    for service in compose.ours() {
        for argv in service.commands() {
            assert!(
                installed.contains(&argv[0]),
                "service {} runs {}, which the image does not install ({installed:?})",
                service.name,
                argv[0]
            );
            assert!(
                build.contains(&format!("target/release/{}", argv[0])),
                "the build stage does not copy out {}",
                argv[0]
            );
        }
    }
    // The image's default command is the gateway, and the names are real.
    assert!(
        dockerfile
            .in_final("CMD")
            .iter()
            .any(|cmd| cmd.contains("asyncgate-server"))
    );
    assert!(binaries.server.exists() && binaries.cli.exists());

    let user = dockerfile.in_final("USER");
    let user = user.last().expect("a USER in the final image");
    assert!(
        !["root", "0"].contains(&user.split(':').next().unwrap_or_default()),
        "runs as root: {user}"
    );
    assert!(
        dockerfile
            .in_final("EXPOSE")
            .iter()
            .any(|e| e.split_whitespace().any(|p| p == "50051"))
    );
    assert!(
        dockerfile
            .in_final("VOLUME")
            .iter()
            .any(|v| v.contains("/data"))
    );
    let server_help = binaries.help("asyncgate-server", None);
    for (name, _) in dockerfile.env() {
        assert!(
            server_help.envs.contains(&name),
            "ENV {name} is not read by asyncgate-server"
        );
    }
}

/// The host port of one `ports` entry, if fixed, and its host address.
fn published(port: &Value) -> (Option<u16>, Option<String>) {
    match port {
        Value::Mapping(_) => {
            let host = port
                .get("host_ip")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let published = port.get("published").map(|p| match p {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.clone(),
                other => panic!("published: {other:?}"),
            });
            (published.and_then(|p| p.parse().ok()), host)
        }
        Value::String(_) | Value::Number(_) => {
            let text = match port {
                Value::String(s) => s.clone(),
                other => other.as_u64().expect("a port").to_string(),
            };
            let text = text.split('/').next().unwrap_or_default();
            let parts: Vec<&str> = text.rsplitn(3, ':').collect();
            match parts.as_slice() {
                // "CONTAINER": an ephemeral host port.
                [_] => (None, None),
                [_, host] => (Some(host.parse().expect("a host port")), None),
                [_, host, ip] => (
                    Some(host.parse().expect("a host port")),
                    Some((*ip).to_owned()),
                ),
                _ => unreachable!(),
            }
        }
        other => panic!("a ports entry: {other:?}"),
    }
}

#[test]
fn the_compose_topology_is_what_the_readme_describes() {
    let compose = Compose::load();
    let services = &compose.services;

    for service in services.values() {
        for dependency in &service.depends_on {
            let target = services.get(dependency).unwrap_or_else(|| {
                panic!(
                    "{} depends on {dependency}, which is no service",
                    service.name
                )
            });
            assert!(
                !service.default_profile() || target.default_profile(),
                "{} (default profile) depends on {dependency}, which only runs in {:?}",
                service.name,
                target.profiles
            );
        }
        for volume in &service.volumes {
            let source = volume.split(':').next().unwrap_or_default();
            if !source.starts_with(['.', '/']) {
                assert!(
                    compose.volumes.contains(source),
                    "{}: volume {source} is not declared",
                    service.name
                );
            }
        }
        for port in &service.ports {
            let (host_port, host_ip) = published(port);
            if let Some(host_port) = host_port {
                assert!(
                    DOCUMENTED_HOST_PORTS.contains(&host_port),
                    "{} publishes host port {host_port}, not one of the documented {DOCUMENTED_HOST_PORTS:?}",
                    service.name
                );
            }
            if service
                .command
                .as_ref()
                .is_some_and(|c| c.iter().any(|a| a == "--insecure"))
            {
                assert_eq!(
                    host_ip.as_deref(),
                    Some("127.0.0.1"),
                    "{}: an --insecure gateway is published on loopback only",
                    service.name
                );
            }
        }
        if service.built {
            assert_eq!(
                service.image.as_deref(),
                compose.ours().next().and_then(|s| s.image.as_deref()),
                "{}: every service of ours runs the same image",
                service.name
            );
        }
    }

    // Every worker reaches a gateway of its own profile by service name.
    let gateway_names: BTreeMap<&str, &Service> =
        compose.gateways().map(|g| (g.name.as_str(), g)).collect();
    for worker in compose.workers() {
        let url = worker.flag("server").expect("workers name their --server");
        let host = url
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split(':').next())
            .unwrap_or_default();
        let gateway = gateway_names.get(host).unwrap_or_else(|| {
            panic!(
                "{} points at {url}, which is no gateway service",
                worker.name
            )
        });
        assert_eq!(
            worker.profiles, gateway.profiles,
            "{} and its gateway {host}",
            worker.name
        );
        let listen = gateway.flag("listen").unwrap_or("0.0.0.0:50051");
        assert!(
            url.ends_with(&format!(
                ":{}",
                listen.rsplit(':').next().unwrap_or_default()
            )),
            "{} dials {url} but {host} listens on {listen}",
            worker.name
        );
        assert!(
            worker.depends_on.iter().any(|d| d == host),
            "{} starts after {host}",
            worker.name
        );
    }

    // Default profile: one durable gateway on a named volume, two workers.
    let durable: Vec<_> = compose.gateways().filter(|g| g.default_profile()).collect();
    assert_eq!(durable.len(), 1, "one gateway in the default profile");
    let store = durable[0].flag("store").expect("--store");
    assert!(
        store.starts_with("/data/") && !store.starts_with("redis"),
        "the default gateway's store is a file in /data: {store}"
    );
    assert!(
        durable[0].volumes.iter().any(|v| v.ends_with(":/data")
            && compose
                .volumes
                .contains(v.split(':').next().unwrap_or_default())),
        "/data is a named volume"
    );
    assert_eq!(compose.workers().filter(|w| w.default_profile()).count(), 2);

    // Profile scale: Redis (durable settings) and two replicas sharing it.
    let in_scale = |s: &&Service| s.profiles.iter().any(|p| p == "scale");
    let redis = services
        .values()
        .filter(in_scale)
        .find(|s| s.image.as_deref().is_some_and(|i| i.starts_with("redis:")))
        .expect("Redis in the scale profile");
    let redis_command = redis
        .command
        .as_ref()
        .expect("redis-server flags")
        .join(" ");
    for setting in [
        "--appendonly yes",
        "--appendfsync always",
        "--maxmemory-policy noeviction",
    ] {
        assert!(
            redis_command.contains(setting),
            "redis without {setting}: {redis_command}"
        );
    }
    let replicas: Vec<_> = compose.gateways().filter(in_scale).collect();
    assert_eq!(replicas.len(), 2, "two gateway replicas");
    for replica in &replicas {
        let store = replica.flag("store").expect("--store");
        assert!(
            store.starts_with(&format!("redis://{}:", redis.name)),
            "{} stores in {store}, not the {} service",
            replica.name,
            redis.name
        );
        assert!(replica.depends_on.contains(&redis.name));
    }
    let served: BTreeSet<_> = compose
        .workers()
        .filter(in_scale)
        .filter_map(|w| w.flag("server"))
        .collect();
    assert_eq!(served.len(), 2, "a worker on each replica: {served:?}");
}
