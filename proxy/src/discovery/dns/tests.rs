//! DNS discovery against real resolution: the system resolver for
//! `localhost`, and for TTLs and failures a small authoritative server on a
//! loopback UDP socket that answers A queries in real DNS wire format (encoded
//! with hickory's own message types), with records and TTLs a test sets.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::op::{Message, ResponseCode};
use hickory_resolver::proto::rr::rdata::A;
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::time::timeout;

use super::*;

const NAME: &str = "blocks.gridmesh.test.";
const PORT: u16 = 9000;

enum Answer {
    Records { ips: Vec<Ipv4Addr>, ttl: u32 },
    ServerFailure,
}

struct DnsServer {
    address: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    queries: Arc<Mutex<Vec<Instant>>>,
    task: JoinHandle<()>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DnsServer {
    async fn start(answer: Answer) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = socket.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(answer));
        let queries = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(serve(socket, Arc::clone(&answer), Arc::clone(&queries)));
        DnsServer {
            address,
            answer,
            queries,
            task,
        }
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock() = answer;
    }

    /// When lookups reached the server. Queries less than 50ms apart count
    /// as one lookup: hickory asks twice before giving up on a SERVFAIL.
    fn lookups(&self) -> Vec<Instant> {
        let mut lookups: Vec<Instant> = Vec::new();
        for &at in self.queries.lock().iter() {
            match lookups.last() {
                Some(&last) if at.duration_since(last) < Duration::from_millis(50) => {}
                _ => lookups.push(at),
            }
        }
        lookups
    }

    /// A resolver that asks only this server, without the hosts file or
    /// search domains, so every lookup the watch makes reaches the server
    /// unless the resolver's TTL cache answers it.
    fn resolver(&self) -> TokioResolver {
        let mut udp = ConnectionConfig::udp();
        udp.port = self.address.port();
        let server = NameServerConfig::new(self.address.ip(), true, vec![udp]);
        let mut builder = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![server]),
            TokioRuntimeProvider::default(),
        );
        let options = builder.options_mut();
        options.ip_strategy = LookupIpStrategy::Ipv4Only;
        options.use_hosts_file = ResolveHosts::Never;
        options.timeout = Duration::from_secs(1);
        options.attempts = 1;
        builder.build().unwrap()
    }
}

async fn serve(socket: UdpSocket, answer: Arc<Mutex<Answer>>, queries: Arc<Mutex<Vec<Instant>>>) {
    let mut buffer = [0; 1500];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buffer).await else {
            return;
        };
        let Ok(request) = Message::from_vec(&buffer[..len]) else {
            continue;
        };
        queries.lock().push(Instant::now());
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.metadata.authoritative = true;
        response.add_queries(request.queries.iter().cloned());
        match &*answer.lock() {
            Answer::ServerFailure => response.metadata.response_code = ResponseCode::ServFail,
            Answer::Records { ips, ttl } => {
                for query in request
                    .queries
                    .iter()
                    .filter(|q| q.query_type == RecordType::A)
                {
                    response.add_answers(
                        ips.iter().map(|&ip| {
                            Record::from_rdata(query.name.clone(), *ttl, RData::A(A(ip)))
                        }),
                    );
                }
            }
        }
        let bytes = response.to_vec().unwrap();
        let _ = socket.send_to(&bytes, peer).await;
    }
}

fn ipv4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, last)
}

fn socket_addresses(lasts: &[u8]) -> Vec<SocketAddr> {
    lasts
        .iter()
        .map(|&l| SocketAddr::new(IpAddr::V4(ipv4(l)), PORT))
        .collect()
}

async fn next_change(
    addresses: &mut watch::Receiver<Addresses>,
    within: Duration,
) -> Vec<SocketAddr> {
    timeout(within, addresses.changed())
        .await
        .expect("the addresses changed in time")
        .expect("the watch is still running");
    addresses.borrow_and_update().to_vec()
}

fn refresh(min_refresh: Duration) -> DnsRefresh {
    DnsRefresh {
        min_refresh,
        max_backoff: Duration::from_secs(2),
    }
}

#[tokio::test]
async fn localhost_resolves_through_the_system_configuration() {
    let resolver = system_resolver().expect("a system resolver");
    let (mut addresses, _task) =
        watch_host(resolver, "localhost".into(), 8080, DnsRefresh::default());
    assert!(addresses.borrow().is_empty());
    let found = next_change(&mut addresses, Duration::from_secs(5)).await;
    assert!(
        found.contains(&"127.0.0.1:8080".parse().unwrap())
            || found.contains(&"[::1]:8080".parse().unwrap()),
        "{found:?}"
    );
}

#[tokio::test]
async fn resolves_again_when_the_ttl_expires_and_not_before() {
    let server = DnsServer::start(Answer::Records {
        ips: vec![ipv4(1)],
        ttl: 2,
    })
    .await;
    let (mut addresses, _task) = watch_host(
        server.resolver(),
        NAME.into(),
        PORT,
        refresh(Duration::from_millis(100)),
    );
    assert_eq!(
        next_change(&mut addresses, Duration::from_secs(5)).await,
        socket_addresses(&[1])
    );
    let resolved_at = Instant::now();
    server.set(Answer::Records {
        ips: vec![ipv4(3), ipv4(2), ipv4(3)],
        ttl: 2,
    });

    let changed = next_change(&mut addresses, Duration::from_secs(5)).await;
    let waited = resolved_at.elapsed();
    assert_eq!(
        changed,
        socket_addresses(&[2, 3]),
        "sorted, without duplicates"
    );
    assert!(
        waited >= Duration::from_millis(1_800) && waited < Duration::from_secs(4),
        "re-resolved after {waited:?}; the TTL was 2s"
    );
    assert_eq!(
        server.lookups().len(),
        2,
        "one lookup per TTL, not one per min_refresh"
    );
}

#[tokio::test]
async fn a_zero_ttl_is_refreshed_at_the_minimum_interval_and_unchanged_sets_are_not_republished() {
    let server = DnsServer::start(Answer::Records {
        ips: vec![ipv4(1), ipv4(2)],
        ttl: 0,
    })
    .await;
    let (mut addresses, _task) = watch_host(
        server.resolver(),
        NAME.into(),
        PORT,
        refresh(Duration::from_millis(300)),
    );
    next_change(&mut addresses, Duration::from_secs(5)).await;
    let after_first = server.lookups().len();
    tokio::time::sleep(Duration::from_millis(1_350)).await;
    let refreshes = server.lookups().len() - after_first;
    assert!(
        (3..=5).contains(&refreshes),
        "{refreshes} lookups in 1.35s with a 300ms minimum"
    );
    assert!(
        !addresses.has_changed().unwrap(),
        "the same set was published again"
    );
}

#[tokio::test]
async fn failures_keep_the_last_addresses_until_resolution_recovers() {
    let server = DnsServer::start(Answer::Records {
        ips: vec![ipv4(1)],
        ttl: 0,
    })
    .await;
    let (mut addresses, _task) = watch_host(
        server.resolver(),
        NAME.into(),
        PORT,
        refresh(Duration::from_millis(100)),
    );
    next_change(&mut addresses, Duration::from_secs(5)).await;

    server.set(Answer::ServerFailure);
    let failing_since = Instant::now();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let retries: Vec<Instant> = server
        .lookups()
        .into_iter()
        .filter(|&at| at > failing_since)
        .collect();
    // Backoff from 100ms: about 0.1, 0.3, 0.7, 1.5s (plus up to 50% jitter).
    assert!(
        (3..=5).contains(&retries.len()),
        "{} retries in 1.5s",
        retries.len()
    );
    let gaps: Vec<Duration> = retries.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.windows(2).all(|g| g[1] > g[0]),
        "retry gaps do not grow: {gaps:?}"
    );
    assert!(!addresses.has_changed().unwrap());
    assert_eq!(addresses.borrow().to_vec(), socket_addresses(&[1]));

    server.set(Answer::Records {
        ips: vec![ipv4(4)],
        ttl: 0,
    });
    assert_eq!(
        next_change(&mut addresses, Duration::from_secs(5)).await,
        socket_addresses(&[4])
    );
}

#[tokio::test]
async fn an_empty_answer_keeps_the_last_addresses() {
    let server = DnsServer::start(Answer::Records {
        ips: vec![ipv4(1)],
        ttl: 0,
    })
    .await;
    let (mut addresses, _task) = watch_host(
        server.resolver(),
        NAME.into(),
        PORT,
        refresh(Duration::from_millis(100)),
    );
    next_change(&mut addresses, Duration::from_secs(5)).await;
    server.set(Answer::Records {
        ips: vec![],
        ttl: 0,
    });
    // Two lookups answered empty: the first could have been in flight
    // before the change; the second was surely answered without addresses.
    let before = server.lookups().len();
    lookups_reach(&server, before + 2).await;
    assert!(!addresses.has_changed().unwrap());
    assert_eq!(addresses.borrow().to_vec(), socket_addresses(&[1]));
}

#[tokio::test]
async fn the_task_keeps_resolving_while_a_receiver_is_left() {
    let server = DnsServer::start(Answer::Records {
        ips: vec![ipv4(1)],
        ttl: 0,
    })
    .await;
    let (mut addresses, task) = watch_host(
        server.resolver(),
        NAME.into(),
        PORT,
        refresh(Duration::from_millis(100)),
    );
    next_change(&mut addresses, Duration::from_secs(5)).await;
    let second = addresses.clone();
    drop(addresses);
    let seen = server.lookups().len();
    lookups_reach(&server, seen + 2).await;
    assert!(!task.is_finished(), "a receiver is still there");
    drop(second);
    timeout(Duration::from_secs(1), task)
        .await
        .expect("the task ended with the last receiver")
        .unwrap();
}

#[tokio::test]
async fn the_task_stops_when_every_receiver_is_gone_even_mid_ttl() {
    let server = DnsServer::start(Answer::Records {
        ips: vec![ipv4(1)],
        ttl: 3_600,
    })
    .await;
    let (mut addresses, task) =
        watch_host(server.resolver(), NAME.into(), PORT, DnsRefresh::default());
    // One lookup answered: the task now waits out the hour.
    next_change(&mut addresses, Duration::from_secs(5)).await;
    drop(addresses);
    timeout(Duration::from_secs(1), task)
        .await
        .expect("the task ended while waiting out a one-hour TTL")
        .unwrap();
}

/// Waits (bounded) until the server has answered `count` lookups.
async fn lookups_reach(server: &DnsServer, count: usize) {
    timeout(Duration::from_secs(5), async {
        while server.lookups().len() < count {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("fewer than {count} lookups within 5 s"));
}
