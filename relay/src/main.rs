//! The relay binary: configuration, logging, signals, then the event loop.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser as _;
use switchboard_relay::config::{Args, Config};
use switchboard_relay::fleet;
use switchboard_relay::http::{self, Metrics};
use switchboard_relay::net::{Control, EventLoop, Listeners, LoopConfig, RelayPorts, Shutdown};
#[cfg(feature = "sfu")]
use switchboard_relay::sfu;
use switchboard_relay::telemetry;
use switchboard_relay::turn::{Credentials, Server, Shared};
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
    // This thread runs signals and the metrics endpoint; each event loop runs on a thread of
    // its own and owns all of its packet-path state.
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
    let threads = config.threads;
    let metrics = Arc::new(Metrics::with_loops(threads));
    // The SFU verifies session tokens with the current secrets; SIGHUP updates them here too.
    let (creds_tx, creds_rx) = watch::channel(config.credentials.clone());
    // The SFU runs on its own thread with its own socket; HTTP reaches it by message.
    #[cfg(feature = "sfu")]
    let sessions = match &config.sfu {
        None => None,
        Some(s) => Some(http::sessions::SessionApi {
            sfu: sfu::shell::start(s, config.socket_buffer)
                .map_err(|e| format!("SFU listener {}: {e}", s.listen))?,
            credentials: creds_rx,
        }),
    };
    #[cfg(not(feature = "sfu"))]
    let sessions: Option<http::sessions::SessionApi> = match &config.sfu {
        None => {
            drop(creds_rx);
            None
        }
        Some(_) => {
            return Err("--sfu-listen: this relay was built without the `sfu` feature".into());
        }
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
    #[cfg(feature = "sfu")]
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
    let mut fleet_final = None;
    if let Some(mut fleet) = config.fleet.clone() {
        fleet.max_allocations = config.max_allocations as u64;
        fleet.max_sfu_sessions = config.sfu.as_ref().map_or(0, |s| s.max_sessions as u64);
        #[cfg(feature = "sfu")]
        let sfu_metrics = sessions.as_ref().map(|s| s.sfu.metrics.clone());
        #[cfg(not(feature = "sfu"))]
        let sfu_metrics: Option<Arc<fleet::SfuMetrics>> = None;
        info!(node = %fleet.node_id, region = fleet.region.as_str(), "registering with the relay registry");
        fleet::spawn(fleet.clone(), metrics.clone(), sfu_metrics.clone())
            .map_err(|e| format!("cannot start the fleet heartbeat: {e}"))?;
        fleet_final = Some((fleet, sfu_metrics));
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
    // Every loop has its own core; they share the nonce key (a nonce minted by one loop is
    // valid on all), the credentials, and the allocation quotas.
    let control = Control::new(threads, config.credentials.clone())
        .map_err(|e| format!("cannot create the event loops' wakers: {e}"))?;
    let shared = Shared::new(config.max_allocations_per_user, config.max_allocations);
    let parked = RelayPorts::shared_parking();
    let mut loops = Vec::with_capacity(threads);
    for id in 0..threads {
        let relays = RelayPorts::new(
            config.relay_ips.clone(),
            config.port_slice(id),
            config.socket_buffer,
        )
        .with_parking(parked.clone());
        let mut server_config = config.server_config(key);
        server_config.relay_families = relays.families();
        let server = Server::with_shared(server_config, config.credentials.clone(), shared.clone());
        let loop_config = LoopConfig {
            id,
            listeners: listeners.clone(),
            tls: tls.clone(),
            reuse_port: config.reuse_port,
            socket_buffer: config.socket_buffer,
        };
        let event_loop = EventLoop::bind(
            loop_config,
            server,
            relays,
            control.clone(),
            metrics.clone(),
        )
        .map_err(|e| format!("cannot listen: {e}"))?;
        loops.push(event_loop);
    }
    info!(relay_ips = ?config.relay_ips, realm = %config.realm, threads, "relay ready");

    // Handlers are installed before the loops start serving, so a signal sent as soon as the
    // relay answers is never met by the default action (termination).
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(term), Ok(int), Ok(hup)) => {
            tokio::spawn(signals(args, control, creds_tx, term, int, hup));
        }
        _ => warn!("cannot install signal handlers; stop the relay with SIGKILL"),
    }
    let drain_timeout = config.drain_timeout;
    let running: Vec<_> = loops
        .into_iter()
        .map(|l| tokio::task::spawn_blocking(move || l.run(drain_timeout)))
        .collect();
    // Stopped loops are kept (with their listening sockets) until all have stopped.
    let mut stopped = Vec::with_capacity(running.len());
    for r in running {
        match r.await {
            Ok(l) => stopped.push(l),
            Err(e) => error!("an event loop failed: {e}"),
        }
    }
    if let Some((fleet, sfu_metrics)) = fleet_final {
        fleet::final_heartbeat(&fleet, &metrics, sfu_metrics.as_deref());
    }
    drop(stopped);
    info!("stopped");
    Ok(())
}

/// The first SIGTERM/SIGINT starts a graceful drain, the second stops the loop at once; SIGHUP
/// re-reads the configuration and swaps credentials in, which is how secrets are rotated without
/// dropping allocations (reloads keep working while draining).
async fn signals(
    args: Args,
    control: Arc<Control>,
    sfu_credentials: watch::Sender<Credentials>,
    mut term: tokio::signal::unix::Signal,
    mut int: tokio::signal::unix::Signal,
    mut hup: tokio::signal::unix::Signal,
) {
    loop {
        let stop = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = hup.recv() => {
                match Config::load(args.clone()) {
                    Ok(c) => {
                        // Nobody may be listening (no SFU); that is fine.
                        let _ = sfu_credentials.send(c.credentials.clone());
                        control.set_credentials(c.credentials);
                    }
                    Err(e) => warn!("reload failed, keeping the old credentials: {e}"),
                }
                continue;
            }
        };
        let next = match control.shutdown() {
            Shutdown::Run => Shutdown::Drain,
            Shutdown::Drain | Shutdown::Now => Shutdown::Now,
        };
        info!(signal = stop, "signal received, shutting down");
        control.request(next);
    }
}
