//! The relay binary: configuration, logging, signals, then the event loop.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser as _;
use switchboard_relay::config::{Args, Config};
use switchboard_relay::http::{self, Metrics};
use switchboard_relay::net::{EventLoop, Listeners, RelayPorts, Shutdown};
use switchboard_relay::sfu;
use switchboard_relay::telemetry;
use switchboard_relay::turn::Server;
use tokio::sync::watch;
use tracing::{error, info, warn};

fn main() -> ExitCode {
    let args = Args::parse();
    let config = Config::load(args.clone());
    let otlp = config.as_ref().ok().and_then(|c| c.otlp_endpoint.clone());
    let telemetry = match telemetry::init(otlp.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot set up logging and tracing: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            error!("configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(endpoint) = &otlp {
        info!(
            endpoint = %telemetry::traces_url(endpoint),
            "exporting spans over OTLP/HTTP"
        );
    }
    // One thread: the event loop owns all packet-path state; metrics and signals are idle tasks.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(args, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}

async fn run(args: Args, config: Config) -> Result<(), String> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| format!("no randomness for the server key: {e}"))?;
    let tls = config.tls().map_err(|e| e.to_string())?;
    let server = Server::new(config.server_config(key), config.credentials.clone());
    let relays = RelayPorts::new(config.relay_ips.clone(), config.port_range);
    let metrics = Arc::new(Metrics::default());
    let (creds_tx, creds_rx) = watch::channel(config.credentials.clone());
    // The SFU runs on its own thread with its own socket; HTTP reaches it by message.
    let sessions = match &config.sfu {
        None => None,
        Some(s) => Some(http::sessions::SessionApi {
            sfu: sfu::shell::start(s).map_err(|e| format!("SFU listener {}: {e}", s.listen))?,
            credentials: creds_rx.clone(),
        }),
    };
    if let Some(addr) = config.sfu.as_ref().and_then(|s| s.http_listen) {
        let listener = http::bind(addr)
            .await
            .map_err(|e| format!("SFU HTTP listener {addr}: {e}"))?;
        info!(%addr, "SFU sessions on /v1/sessions");
        tokio::spawn(http::serve_with_sessions(
            listener,
            metrics.clone(),
            sessions.clone(),
        ));
    }
    if let (Some(addr), Some(api)) = (config.sfu.as_ref().and_then(|s| s.https_listen), &sessions) {
        let tls = tls
            .clone()
            .ok_or("--sfu-https-listen needs --tls-cert and --tls-key")?;
        let listener = http::bind(addr)
            .await
            .map_err(|e| format!("SFU HTTPS listener {addr}: {e}"))?;
        info!(%addr, "SFU sessions on https /v1/sessions");
        let serve = http::sessions::serve_tls(listener, tls, metrics.clone(), api.clone());
        tokio::spawn(serve);
    }
    if let Some(addr) = config.metrics_listen {
        let listener = http::bind(addr)
            .await
            .map_err(|e| format!("metrics listener {addr}: {e}"))?;
        info!(%addr, "metrics on /metrics, health on /healthz");
        tokio::spawn(http::serve_with_sessions(
            listener,
            metrics.clone(),
            sessions,
        ));
    }
    let listeners = Listeners {
        plain: config.listen.clone(),
        tls: config.tls_listen.clone(),
    };
    let event_loop = EventLoop::bind(server, relays, &listeners, tls, metrics)
        .await
        .map_err(|e| format!("cannot listen: {e}"))?;
    info!(relay_ips = ?config.relay_ips, realm = %config.realm, "relay ready");

    let (shutdown_tx, shutdown_rx) = watch::channel(Shutdown::Run);
    tokio::spawn(signals(args, shutdown_tx, creds_tx));
    event_loop
        .run(shutdown_rx, creds_rx, config.drain_timeout)
        .await;
    info!("stopped");
    Ok(())
}

/// The first SIGTERM/SIGINT starts a graceful drain, the second stops the loop at once; SIGHUP
/// re-reads the configuration and swaps credentials in, which is how secrets are rotated without
/// dropping allocations (reloads keep working while draining).
async fn signals(
    args: Args,
    shutdown: watch::Sender<Shutdown>,
    credentials: watch::Sender<switchboard_relay::turn::Credentials>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        warn!("cannot install signal handlers; stop the relay with SIGKILL");
        // Keep the senders alive: dropping them would read as a shutdown request.
        std::future::pending::<()>().await;
        return;
    };
    loop {
        let stop = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = hup.recv() => {
                match Config::load(args.clone()) {
                    Ok(c) => {
                        let _ = credentials.send(c.credentials);
                    }
                    Err(e) => warn!("reload failed, keeping the old credentials: {e}"),
                }
                continue;
            }
        };
        let next = match *shutdown.borrow() {
            Shutdown::Run => Shutdown::Drain,
            Shutdown::Drain | Shutdown::Now => Shutdown::Now,
        };
        info!(signal = stop, "signal received, shutting down");
        if shutdown.send(next).is_err() {
            // The loop has already stopped.
            return;
        }
    }
}
