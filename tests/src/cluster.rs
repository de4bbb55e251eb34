//! Several origins as one cluster over one shared object store, as the
//! tests start them: each on its own port with its own log directory, all
//! naming each other in `--origins`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use prefold_core::publish::Batch;
use prefold_core::{Key, OriginList};

use crate::{
    bare_client, free_port, repo_root, token_with, OriginProc, CLUSTER_SECRET, TOKEN_SECRET,
};

/// The cluster's origins, named `o0`, `o1`, …
pub struct Cluster {
    /// The origins, in name order.
    pub origins: Vec<OriginProc>,
    /// The `--origins` list they were started with.
    pub list: String,
}

impl Cluster {
    /// Starts `n` origins over the store in `data`, each with `extra`
    /// arguments, and waits until all are ready.
    pub async fn start(data: &Path, n: usize, extra: &[&str]) -> Result<Cluster> {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let list = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("o{i}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut origins = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            origins.push(Cluster::spawn_one(data, &list, i, *port, extra).await?);
        }
        for o in &origins {
            o.wait_ready().await?;
        }
        Ok(Cluster { origins, list })
    }

    async fn spawn_one(
        data: &Path,
        list: &str,
        i: usize,
        port: u16,
        extra: &[&str],
    ) -> Result<OriginProc> {
        let listen = format!("127.0.0.1:{port}");
        let name = format!("o{i}");
        let wal = wal_dir(data, i);
        let wal = wal.to_str().context("wal path")?;
        let mut args = vec![
            "--listen",
            &listen,
            "--origins",
            list,
            "--name",
            &name,
            "--wal-dir",
            wal,
        ];
        args.extend_from_slice(extra);
        OriginProc::spawn(data, &args, &[]).await
    }

    /// Starts origin `i` again (after it was stopped or killed), on its
    /// port, and waits until it is ready.
    pub async fn restart(&mut self, i: usize, extra: &[&str]) -> Result<()> {
        let port = self.origins[i].addr.port();
        let data = self.origins[i].data.clone();
        let o = Cluster::spawn_one(&data, &self.list, i, port, extra).await?;
        o.wait_ready().await?;
        self.origins[i] = o;
        Ok(())
    }

    /// The routing the origins use.
    pub fn routes(&self) -> OriginList {
        OriginList::parse(&self.list).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Keys `{prefix}1`, `{prefix}2`, … that origin `i` owns.
    pub fn keys_of<'a>(&'a self, prefix: &'a str, i: usize) -> impl Iterator<Item = String> + 'a {
        (1..)
            .map(move |n| format!("{prefix}{n}"))
            .filter(move |k| self.owner(k) == i)
    }

    /// The index of a key's owner.
    pub fn owner(&self, key: &str) -> usize {
        let key = Key::parse(key).unwrap_or_else(|e| panic!("{key}: {e}"));
        let name = self.routes().owner(&key).name.clone();
        name[1..].parse().unwrap_or_default()
    }

    /// Waits until the view engines of all origins are idle and every
    /// message one sent another has arrived: every origin reads no pending
    /// work and nothing queued for another, twice in a row with the same
    /// totals of messages sent and received. (A message counts as queued at
    /// its sender until the receiver has counted it pending, so work in
    /// flight always shows somewhere; reading the origins one after
    /// another could still miss a message that moved between two reads,
    /// and the second round catches that by its totals.)
    pub async fn settle(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = None;
        loop {
            let now = self.totals().await?;
            if now.0 == 0.0 && last == Some(now) {
                return Ok(());
            }
            last = Some(now);
            ensure!(
                Instant::now() < deadline,
                "the cluster's views did not settle: (pending, sent, received) = {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Pending view work, and view messages sent and received, over all
    /// origins.
    async fn totals(&self) -> Result<(f64, f64, f64)> {
        let (mut pending, mut sent, mut received) = (0.0, 0.0, 0.0);
        for o in &self.origins {
            let m = o.metrics().await?;
            let get = |n: &str| m.get(n).copied().unwrap_or(0.0);
            pending += get("prefold_view_pending") + get("prefold_view_outbound");
            sent += get("prefold_view_remote_messages_sent_total");
            received += get("prefold_view_remote_messages_received_total");
        }
        Ok((pending, sent, received))
    }

    /// Every object every origin's change feed lists: key → body.
    pub async fn objects(&self) -> Result<BTreeMap<String, String>> {
        let mut all = BTreeMap::new();
        for o in &self.origins {
            for (k, body) in feed(&o.url()).await? {
                ensure!(
                    all.insert(k.clone(), body).is_none(),
                    "{k} is published by two origins"
                );
            }
        }
        Ok(all)
    }
}

/// Where origin `i` of a cluster over `data` keeps its log.
fn wal_dir(data: &Path, i: usize) -> PathBuf {
    data.join(format!("wal-o{i}"))
}

/// Every live object an origin's change feed lists (start it with
/// `--feed-horizon-ms 0` to see the latest changes): key → body.
pub async fn feed(base: &str) -> Result<BTreeMap<String, String>> {
    let token = token_with(CLUSTER_SECRET, "cluster", 600);
    let mut out = BTreeMap::new();
    let mut after = 0;
    loop {
        let r = bare_client()
            .get(format!("{base}/_prefold/changes?after={after}"))
            .bearer_auth(&token)
            .send()
            .await?;
        ensure!(r.status() == 200, "change feed of {base}: {}", r.status());
        let bytes = r.bytes().await?;
        let page = Batch::parse(&bytes).map_err(anyhow::Error::msg)?;
        for item in &page.items {
            match item.b {
                Some(b) => out.insert(item.k.to_string(), b.get().to_owned()),
                None => out.remove(item.k.as_ref()),
            };
        }
        match page.next {
            Some(next) if page.more => after = next,
            _ => return Ok(out),
        }
    }
}

/// The demo data generator's binary (built by `make e2e`).
pub fn gen_bin() -> PathBuf {
    std::env::var_os("PREFOLD_GEN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debug/prefold-gen"))
}

/// Loads the demo data set at `scale` with `prefold-gen`: to one origin
/// (`--origin URL`) or to each key's owner (`--origins LIST`).
pub async fn load_demo(target: &[&str], scale: usize) -> Result<()> {
    let scale = scale.to_string();
    let mut cmd = std::process::Command::new(gen_bin());
    cmd.args(target)
        .args(["--scale", &scale, "--concurrency", "16"])
        .env("PREFOLD_TOKEN", token_with(TOKEN_SECRET, "write:*", 600));
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await?
        .with_context(|| format!("running {}", gen_bin().display()))?;
    ensure!(
        out.status.success(),
        "prefold-gen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
