//! `asyncgate-server`: parse flags, validate (exit 64 on bad config, before
//! binding), serve until SIGINT/SIGTERM, then shut down gracefully. SIGHUP
//! reloads the `--keys` file (and is logged and ignored without one).

use std::process::ExitCode;

use asyncgate_server::config::{Config, parse_args};

/// mimalloc: the gateway allocates and frees small objects on every message;
/// glibc's allocator spent about 15% of CPU on that in the benchmark's e2e
/// profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let parsed = match parse_args(std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(error) => {
            use clap::error::ErrorKind;
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) {
                error.exit();
            }
            let _ = error.print();
            return ExitCode::from(64);
        }
    };
    let print_config = parsed.cli.print_config;
    let otlp = asyncgate_server::telemetry::otlp::OtlpFlags {
        endpoint: parsed.cli.otlp_endpoint.clone(),
        protocol: parsed.cli.otlp_protocol,
    };
    let _telemetry = match asyncgate_server::telemetry::init(parsed.cli.log_format, &otlp) {
        Ok(telemetry) => telemetry,
        Err(message) => {
            eprintln!("asyncgate-server: {message}");
            return ExitCode::from(64);
        }
    };
    let config = match Config::try_from(parsed.cli) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("asyncgate-server: {message}");
            return ExitCode::from(64);
        }
    };
    if print_config {
        print!("{}", parsed.effective);
        return ExitCode::SUCCESS;
    }
    // Listening for SIGHUP before the gateway starts: its default action
    // ends the process, so a SIGHUP sent once the gateway says it listens
    // (with or without --keys) must find the handler in place.
    #[cfg(unix)]
    let hangups = {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::hangup())
            .inspect_err(|error| {
                tracing::warn!(%error, "cannot listen for SIGHUP; keys reload only on restart")
            })
            .ok()
    };
    let running = match asyncgate_server::start(config).await {
        Ok(running) => running,
        Err(error) => {
            eprintln!("asyncgate-server: {error}");
            return ExitCode::from(1);
        }
    };
    #[cfg(unix)]
    if let Some(mut hangups) = hangups {
        let keys = running.keys();
        // Runs until the process exits; it holds nothing to clean up.
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                match &keys {
                    // The outcome goes to the audit log; a bad file leaves
                    // the keys in force.
                    Some(keys) => {
                        let _ = keys.reload();
                    }
                    None => tracing::info!("SIGHUP: no --keys file to reload"),
                }
            }
        });
    }
    wait_for_signal().await;
    tracing::info!("signal received; shutting down");
    running.initiate_shutdown();
    let second = async {
        wait_for_signal().await;
        eprintln!("asyncgate-server: second signal; exiting now");
        std::process::exit(130);
    };
    tokio::select! {
        result = running.join() => match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("asyncgate-server: {error}");
                ExitCode::from(1)
            }
        },
        _ = second => ExitCode::from(130),
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
