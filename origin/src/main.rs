//! `prefold-origin`: parse configuration, serve, drain on SIGTERM or Ctrl-C.
//!
//! The first line on standard output is `prefold-origin listening on
//! http://ADDR`, so that scripts and tests that start it with `--listen
//! 127.0.0.1:0` learn the port it got. Logs go to standard error
//! (`PREFOLD_LOG`, e.g. `debug` or `prefold_origin=trace`).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use prefold_origin::{Config, Server};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let config = Config::parse();
    if let Err(e) = config.validate() {
        clap::Error::raw(clap::error::ErrorKind::ArgumentConflict, format!("{e}\n")).exit();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("PREFOLD_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let model = match &config.model {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the model file {}", path.display()))?;
            match prefold_core::Model::parse(&path.display().to_string(), &text) {
                Ok(m) => Some(m),
                Err(e) => {
                    eprintln!("error: the model is not valid: {e}");
                    return Ok(ExitCode::from(2));
                }
            }
        }
        None => None,
    };
    let mut origin = Server::new(&config).context("opening the store and the write-ahead log")?;
    if let Some(model) = model {
        origin = origin.with_model(model);
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "prefold-origin listening on http://{addr}")?;
    out.flush()?;
    drop(out);
    tracing::info!(%addr, store = ?config.store, data = %config.data.display(), "started");

    let left = origin.run(listener, shutdown_signal()).await?;
    Ok(if left == 0 {
        ExitCode::SUCCESS
    } else {
        tracing::error!(left, "exiting with writes that never reached the store");
        ExitCode::FAILURE
    })
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
