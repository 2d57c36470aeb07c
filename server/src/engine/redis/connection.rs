//! One connection type for a standalone Redis and a Redis Cluster.
//!
//! `redis://HOST:PORT/DB` (or `rediss://`) is one server, reached through a
//! reconnecting multiplexed connection. `redis+cluster://HOST:PORT,HOST:PORT`
//! (or `rediss+cluster://`) names seed nodes of a cluster; commands are
//! routed by key slot. Scripts and pipelines only ever touch one slot, and
//! [`Conn::batch`] runs commands of different slots as separate requests on
//! a cluster (one pipeline on a single server).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, Pipeline, ProtocolVersion, PushInfo, RedisError, RedisFuture, TlsCertificates, Value,
};
use tokio::sync::mpsc::UnboundedSender;

/// Command connections per server.
const POOL_SIZE: usize = 4;

/// Where the store lives. The URLs may hold a password: they are used to
/// connect and never shown (`Debug` hides it).
#[derive(Clone, PartialEq, Eq)]
pub(super) enum Target {
    /// One server.
    Single(String),
    /// Seed nodes of a cluster, as `redis://` URLs.
    Cluster(Vec<String>),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hide = crate::config::hide_password;
        match self {
            Self::Single(url) => f.debug_tuple("Single").field(&hide(url)).finish(),
            Self::Cluster(nodes) => f
                .debug_tuple("Cluster")
                .field(&nodes.iter().map(|n| hide(n)).collect::<Vec<_>>())
                .finish(),
        }
    }
}

impl Target {
    /// Reads a `--store` URL.
    pub(super) fn parse(url: &str) -> Result<Self, String> {
        let cluster = |scheme: &str, rest: &str| -> Result<Self, String> {
            let hosts = rest.split('/').next().unwrap_or_default();
            let nodes: Vec<String> = hosts
                .split(',')
                .filter(|node| !node.is_empty())
                .map(|node| format!("{scheme}://{node}"))
                .collect();
            if nodes.is_empty() {
                return Err(format!(
                    "{url}: name at least one cluster node, as in redis+cluster://10.0.0.1:6379,10.0.0.2:6379"
                ));
            }
            Ok(Self::Cluster(nodes))
        };
        if let Some(rest) = url.strip_prefix("redis+cluster://") {
            cluster("redis", rest)
        } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
            cluster("rediss", rest)
        } else if url.starts_with("redis://") || url.starts_with("rediss://") {
            redis::Client::open(url).map_err(|e| format!("{url}: {e}"))?;
            Ok(Self::Single(url.to_owned()))
        } else {
            Err(format!(
                "{url}: use redis://HOST:PORT/DB, rediss://… for TLS, or redis+cluster://HOST:PORT,HOST:PORT for a cluster"
            ))
        }
    }
}

/// Command connections to one server: each multiplexed connection encodes
/// and parses on one task, so a few of them, taken in turn, spread that work
/// over the runtime's threads.
#[derive(Clone)]
pub(super) struct Pool {
    conns: Arc<[ConnectionManager]>,
    next: Arc<AtomicUsize>,
}

impl Pool {
    fn pick(&self) -> ConnectionManager {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[index].clone()
    }
}

/// Command connections, or the event subscription.
#[derive(Clone)]
pub(super) enum Conn {
    Single(Pool),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(pool) => {
                let mut conn = pool.pick();
                Box::pin(async move { conn.req_packed_command(cmd).await })
            }
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(pool) => {
                let mut conn = pool.pick();
                Box::pin(async move { conn.req_packed_commands(pipeline, offset, count).await })
            }
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(pool) => pool.conns[0].get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

impl Conn {
    /// Whether one pipeline's commands run in order, whatever their slots
    /// (one connection to one server; a cluster splits a pipeline by node).
    pub(super) fn orders_pipelines(&self) -> bool {
        matches!(self, Conn::Single(_))
    }

    /// Opens a command connection; with `push`, a RESP3 connection whose
    /// pushes (messages, disconnections) go there.
    pub(super) async fn open(
        target: &Target,
        tls: Option<&TlsCertificates>,
        push: Option<UnboundedSender<PushInfo>>,
    ) -> Result<Self, RedisError> {
        let size = if push.is_some() { 1 } else { POOL_SIZE };
        const CONNECT: Duration = Duration::from_secs(5);
        const RESPONSE: Duration = Duration::from_secs(10);
        match target {
            Target::Single(url) => {
                let open = |info: redis::ConnectionInfo| match tls {
                    Some(certs) => redis::Client::build_with_tls(info, certs.clone()),
                    None => redis::Client::open(info),
                };
                let mut client = open(redis::IntoConnectionInfo::into_connection_info(
                    url.as_str(),
                )?)?;
                let mut config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT))
                    .set_response_timeout(Some(RESPONSE))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(2));
                if let Some(push) = push {
                    let info = client.get_connection_info().clone();
                    let resp3 = info.clone().set_redis_settings(
                        info.redis_settings()
                            .clone()
                            .set_protocol(ProtocolVersion::RESP3),
                    );
                    client = open(resp3)?;
                    config = config.set_push_sender(push).set_automatic_resubscription();
                }
                let mut conns = Vec::with_capacity(size);
                for _ in 0..size {
                    conns.push(
                        ConnectionManager::new_with_config(client.clone(), config.clone()).await?,
                    );
                }
                Ok(Conn::Single(Pool {
                    conns: conns.into(),
                    next: Arc::default(),
                }))
            }
            Target::Cluster(nodes) => {
                let mut builder = ClusterClient::builder(nodes.clone())
                    .connection_timeout(CONNECT)
                    .response_timeout(RESPONSE)
                    .retries(2);
                if let Some(certs) = tls {
                    builder = builder.certs(certs.clone());
                }
                if let Some(push) = push {
                    builder = builder
                        .use_protocol(ProtocolVersion::RESP3)
                        .push_sender(push);
                }
                Ok(Conn::Cluster(
                    builder.build()?.get_async_connection().await?,
                ))
            }
        }
    }

    /// Subscribes to `channel` (again, after a reconnection).
    pub(super) async fn subscribe(&mut self, channel: &str) -> Result<(), RedisError> {
        match self {
            Conn::Single(pool) => pool.conns[0].clone().subscribe(channel).await,
            Conn::Cluster(conn) => conn.subscribe(channel).await,
        }
    }

    /// Runs independent commands, in whatever slots: one pipeline on a single
    /// server, concurrent requests on a cluster. Replies come in order.
    pub(super) async fn batch(&self, cmds: &[Cmd]) -> Result<Vec<Value>, RedisError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Conn::Single(pool) => {
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd.clone());
                }
                pipe.query_async(&mut pool.pick()).await
            }
            Conn::Cluster(conn) => join_all(cmds.iter().map(|cmd| {
                let mut conn = conn.clone();
                async move { cmd.query_async::<Value>(&mut conn).await }
            }))
            .await
            .into_iter()
            .collect(),
        }
    }
}

/// Every `maxmemory-policy` the target reports (one per node of a cluster),
/// from CONFIG GET or, where CONFIG is disabled (managed services), INFO.
pub(super) async fn eviction_policies(conn: &Conn) -> Result<Vec<String>, RedisError> {
    fn texts(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::BulkString(bytes) => out.push(String::from_utf8_lossy(bytes).into_owned()),
            Value::SimpleString(text) | Value::VerbatimString { text, .. } => {
                out.push(text.clone())
            }
            Value::Array(items) | Value::Set(items) => {
                items.iter().for_each(|item| texts(item, out))
            }
            Value::Map(pairs) => pairs.iter().for_each(|(key, value)| {
                texts(key, out);
                texts(value, out);
            }),
            _ => {}
        }
    }
    let mut conn = conn.clone();
    let config: Result<Value, RedisError> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(&mut conn)
        .await;
    let mut found = Vec::new();
    if let Ok(value) = config {
        let mut words = Vec::new();
        texts(&value, &mut words);
        found = words
            .windows(2)
            .filter(|pair| pair[0] == "maxmemory-policy")
            .map(|pair| pair[1].clone())
            .collect();
    }
    if found.is_empty() {
        let info: Value = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await?;
        let mut sections = Vec::new();
        texts(&info, &mut sections);
        found = sections
            .iter()
            .flat_map(|section| section.lines())
            .filter_map(|line| line.strip_prefix("maxmemory_policy:"))
            .map(|policy| policy.trim().to_owned())
            .collect();
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_single_and_cluster_urls() {
        assert_eq!(
            Target::parse("redis://127.0.0.1:6379/0"),
            Ok(Target::Single("redis://127.0.0.1:6379/0".into()))
        );
        assert_eq!(
            Target::parse("redis+cluster://10.0.0.1:7000,10.0.0.2:7000/"),
            Ok(Target::Cluster(vec![
                "redis://10.0.0.1:7000".into(),
                "redis://10.0.0.2:7000".into()
            ]))
        );
        assert_eq!(
            Target::parse("rediss+cluster://h:1"),
            Ok(Target::Cluster(vec!["rediss://h:1".into()]))
        );
        assert!(
            Target::parse("redis+cluster://")
                .unwrap_err()
                .contains("at least one")
        );
        assert!(Target::parse("http://x").is_err());
    }

    #[test]
    fn a_password_in_the_url_is_never_shown() {
        for url in [
            "redis://:s3cret@127.0.0.1:6379/0",
            "redis://user:s3cret@127.0.0.1:6379",
        ] {
            let shown = format!("{:?}", Target::parse(url).unwrap());
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("127.0.0.1:6379"), "{shown}");
        }
    }
}
