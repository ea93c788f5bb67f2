//! Endpoints named by DNS: the proxy resolves `hostname:port` through the
//! system resolver (here `localhost` from /etc/hosts; the TTL-driven refresh
//! is covered against a real DNS responder in proxy/src/discovery/dns/tests.rs).

use gridmesh_tests::harness::{http1_client, proxy, render, upstream, within};

#[tokio::test]
async fn a_dns_named_endpoint_is_resolved_and_served() {
    let block = upstream("block-dns").await;
    let port = block.local_addr().port();
    // Where localhost also resolves to ::1 and the upstream listens on IPv4
    // only, connect failures to ::1 are retried onto 127.0.0.1.
    let proxy = proxy(&render(
        r#"
listeners:
  - { name: in, address: "127.0.0.1:0", routeTable: rt }
routeTables:
  - name: rt
    virtualHosts:
      - name: all
        domains: ["*"]
        routes:
          - name: all
            route:
              cluster: named
              retryPolicy: { maxRetries: 3, retryOn: [CONNECT_FAILURE] }
clusters: [{ name: named, connectTimeout: 1s, dnsMinRefresh: 0.2s }]
endpoints: [{ cluster: named, endpoints: [{ address: "localhost:${port}" }] }]
"#,
        &[("port", &port)],
    ))
    .await;

    // The first answer arrives asynchronously after start.
    let client = http1_client();
    let reply = within("DNS endpoint becomes reachable", async {
        loop {
            let reply = client.get(proxy.addr("in"), "block", "/echo").await;
            if reply.status == 200 {
                return reply;
            }
            assert_eq!(reply.error(), Some("no_healthy_upstream"), "{reply:?}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(reply.upstream(), Some("block-dns"));

    let (status, clusters) = proxy.admin_get("/clusters").await;
    assert_eq!(status, 200);
    assert!(
        clusters.contains(&format!("127.0.0.1:{port}")),
        "resolved address listed in /clusters: {clusters}"
    );
}
