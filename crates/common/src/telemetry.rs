//! Logs and metrics. Human-readable logs on a terminal, JSON lines
//! otherwise (or when `--log-format json` is asked for), so that a
//! scheduled run's logs can be shipped as they are.

use std::io::IsTerminal;
use std::net::SocketAddr;

use tracing_subscriber::{fmt, EnvFilter};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Pretty on a terminal, JSON otherwise.
    #[default]
    Auto,
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global tracing subscriber. `RUST_LOG` overrides the level.
pub fn init_logging(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Starts the Prometheus endpoint (`/metrics`) on `addr`.
pub fn serve_metrics(addr: SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| anyhow::anyhow!("cannot start the metrics endpoint on {addr}: {e}"))?;
    tracing::info!(%addr, "serving Prometheus metrics on /metrics");
    Ok(())
}

/// Starts the Prometheus endpoint for a long-running process that must not
/// fail to start because of its metrics: on `addr`, or, when that port is
/// taken (a second process of the same kind on this machine), on a free
/// port of the same address (logged); any other failure is logged and the
/// process runs without metrics. Returns the address served, if any.
pub fn serve_metrics_or_fallback(addr: SocketAddr) -> Option<SocketAddr> {
    let first = match serve_metrics(addr) {
        Ok(()) => return Some(addr),
        Err(e) => e,
    };
    // Taken (by another process, possibly one that started at the same
    // moment): a free port of the same address, as the kernel picks it.
    let taken = std::net::TcpListener::bind(addr)
        .err()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::AddrInUse);
    if !taken {
        tracing::error!(%addr, error = %first, "cannot serve metrics: running without them");
        return None;
    }
    let free = std::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0))
        .and_then(|l| l.local_addr())
        .ok()?;
    match serve_metrics(free) {
        Ok(()) => {
            tracing::warn!(configured = %addr, serving = %free,
                "the metrics address is in use (another process on this machine?): serving on a free port instead; \
                 set metrics_addr to a port of its own to scrape it at a fixed address");
            Some(free)
        }
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot serve metrics: running without them");
            None
        }
    }
}
