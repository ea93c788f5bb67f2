//! gridmesh-block's dynamic batcher end to end, observed through the
//! batch_probe model: its OUTPUT__1 is the batch size its forward ran with,
//! OUTPUT__0 is 2 x its input row, and INPUT__1 ("work") keeps its single CPU
//! instance busy for about 0.35 ms per unit. Its config: max_batch_size 16,
//! max_queue_delay 100 ms, a queue of 8.

mod support;

use std::time::Duration;

use gridmesh_proto::inference::{ModelInferRequest, ModelInferResponse, ServerReadyRequest};
use gridmesh_tests::prometheus;
use support::{
    BlockServer, Client, Form, STOP_GRACE, Tolerance, assert_output, batch_counts, copy_models,
    infer_request, model_labels, model_stats, probe_request, probe_result, test_models,
};
use tokio::task::JoinHandle;
use tonic::{Code, Status};

/// Work for the request that keeps batch_probe's instance busy while others
/// queue: about a second on the 2-core machine the model was written on, so
/// the test's queued requests arrive well before it ends.
const LONG_WORK: i64 = 3000;

type Call = JoinHandle<Result<ModelInferResponse, Status>>;

/// Starts `request` on its own task (all tasks share the client's connection).
fn spawn_infer(client: &Client, request: ModelInferRequest) -> Call {
    let mut client = client.clone();
    tokio::spawn(async move { client.model_infer(request).await.map(|r| r.into_inner()) })
}

async fn finish(call: Call, what: &str) -> ModelInferResponse {
    call.await
        .unwrap()
        .unwrap_or_else(|s| panic!("{what}: {s:?}"))
}

/// Values that are exact in f32 and all different.
fn distinct_values(count: usize, offset: f32) -> Vec<f32> {
    (0..count).map(|i| offset + 0.25 + 1.5 * i as f32).collect()
}

fn doubled(values: &[f32]) -> Vec<f64> {
    values.iter().map(|v| f64::from(2.0 * v)).collect()
}

async fn probe_server(extra_args: &[&str]) -> (BlockServer, tempfile::TempDir) {
    let repo = copy_models(&["batch_probe"]);
    let server = BlockServer::start_ready_with(repo.path(), extra_args).await;
    (server, repo)
}

/// batch_probe's gauge `name` (waiting or running) as /metrics shows it.
async fn probe_gauge(server: &BlockServer, name: &str) -> Option<f64> {
    let text = server.metrics().await;
    prometheus::sum(
        &text,
        &format!("gridmesh_block:{name}"),
        &model_labels("batch_probe", "1"),
    )
}

/// Waits until `count` requests are in batch_probe's running batch.
async fn wait_running(server: &BlockServer, count: f64) {
    server
        .poll("batch_probe num_requests_running", async || {
            (probe_gauge(server, "num_requests_running").await == Some(count)).then_some(())
        })
        .await
}

/// Occupies batch_probe's single instance with a long request and returns
/// once it runs.
async fn occupy_instance(server: &BlockServer, client: &Client) -> Call {
    let busy = spawn_infer(client, probe_request(&[-1.0], LONG_WORK));
    wait_running(server, 1.0).await;
    busy
}

async fn assert_long_request_ran_alone(busy: Call) {
    let (values, seen) = probe_result(&finish(busy, "the long request").await);
    assert_eq!((values, seen), (vec![-2.0], vec![1]));
}

#[tokio::test]
async fn concurrent_requests_run_as_one_batch_and_each_gets_its_own_row() {
    let (server, _repo) = probe_server(&[]).await;
    let mut client = server.client().await;
    let values = distinct_values(8, 0.0);
    let calls: Vec<Call> = values
        .iter()
        .map(|v| spawn_infer(&client, probe_request(&[*v], 0)))
        .collect();
    for (call, value) in calls.into_iter().zip(&values) {
        let response = finish(call, &format!("request {value}")).await;
        let (result, seen) = probe_result(&response);
        assert_eq!(
            result,
            doubled(&[*value]),
            "request {value} got another row"
        );
        assert_eq!(
            seen,
            [8],
            "request {value}: all 8 should share one batch (100 ms queue delay)"
        );
    }

    let stats = server
        .poll("batch_probe statistics for 8 rows", async || {
            let stats = model_stats(&mut client, "batch_probe", "1").await;
            (stats.inference_count >= 8).then_some(stats)
        })
        .await;
    assert_eq!(
        (stats.inference_count, stats.execution_count),
        (8, 1),
        "{stats:?}"
    );
    assert_eq!(batch_counts(&stats), [(8, 1)].into(), "{stats:?}");
    let text = server.metrics().await;
    let labels = model_labels("batch_probe", "1");
    assert_eq!(
        prometheus::sum(&text, "gridmesh_block:batch_size_count", &labels),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        prometheus::sum(&text, "gridmesh_block:batch_size_sum", &labels),
        Some(8.0),
        "{text}"
    );
}

#[tokio::test]
async fn a_request_with_three_rows_gets_its_three_rows_back() {
    let (server, _repo) = probe_server(&[]).await;
    let client = server.client().await;

    // Alone.
    let rows = [1.5, -2.25, 3.0];
    let alone = finish(spawn_infer(&client, probe_request(&rows, 0)), "three rows").await;
    assert_eq!(probe_result(&alone), (doubled(&rows), vec![3, 3, 3]));

    // In one batch with two single-row requests: 5 rows, each request's rows
    // in its own order.
    let three = spawn_infer(&client, probe_request(&rows, 0));
    let first = spawn_infer(&client, probe_request(&[10.0], 0));
    let second = spawn_infer(&client, probe_request(&[20.0], 0));
    let three = finish(three, "three rows").await;
    assert_eq!(probe_result(&three), (doubled(&rows), vec![5, 5, 5]));
    assert_eq!(
        probe_result(&finish(first, "first single row").await),
        (vec![20.0], vec![5])
    );
    assert_eq!(
        probe_result(&finish(second, "second single row").await),
        (vec![40.0], vec![5])
    );
}

#[tokio::test]
async fn a_model_without_dynamic_batching_runs_every_request_alone() {
    const REQUESTS: u64 = 6;
    let example = test_models().example("two_io", "1");
    let rows = example.inputs[0].shape[0] as u64;
    let repo = copy_models(&["two_io"]);
    let server = BlockServer::start_ready(repo.path()).await;
    let mut client = server.client().await;
    let calls: Vec<Call> = (0..REQUESTS)
        .map(|_| {
            spawn_infer(
                &client,
                infer_request("two_io", "1", &example.inputs, Form::Typed),
            )
        })
        .collect();
    for call in calls {
        let response = finish(call, "two_io").await;
        for expected in &example.outputs {
            assert_output(&response, expected, Tolerance::Exact);
        }
    }
    let stats = server
        .poll("two_io statistics for every request", async || {
            let stats = model_stats(&mut client, "two_io", "1").await;
            (stats.inference_count >= REQUESTS * rows).then_some(stats)
        })
        .await;
    assert_eq!(
        (stats.inference_count, stats.execution_count),
        (REQUESTS * rows, REQUESTS),
        "one execution per request: {stats:?}"
    );
    assert_eq!(batch_counts(&stats), [(rows, REQUESTS)].into(), "{stats:?}");
}

#[tokio::test]
async fn requests_cancelled_while_queued_are_never_computed() {
    const CANCELLED: usize = 3;
    const DEADLINE: Duration = Duration::from_millis(100);
    let (server, _repo) = probe_server(&[]).await;
    let mut client = server.client().await;
    let busy = occupy_instance(&server, &client).await;

    // Requests that give up while the instance is still busy: the deadline
    // travels as grpc-timeout, and the client drops the call when it passes.
    let mut cancelled = Vec::new();
    for value in distinct_values(CANCELLED, 100.0) {
        let mut client = client.clone();
        let mut request = tonic::Request::new(probe_request(&[value], 0));
        request.set_timeout(DEADLINE);
        cancelled.push(tokio::spawn(async move {
            tokio::time::timeout(DEADLINE, client.model_infer(request)).await
        }));
    }
    for call in cancelled {
        match call.await.unwrap() {
            Err(_elapsed) => {}
            Ok(Err(status))
                if matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled) => {}
            Ok(other) => panic!("a request past its deadline got {other:?}"),
        }
    }
    assert_long_request_ran_alone(busy).await;

    let labels = [
        ("model_name", "batch_probe"),
        ("model_version", "1"),
        ("reason", "cancelled"),
    ];
    server
        .poll("3 cancelled requests in /metrics", async || {
            let text = server.metrics().await;
            let failures = prometheus::sum(&text, "gridmesh_block:request_failure_total", &labels);
            let waiting = prometheus::sum(
                &text,
                "gridmesh_block:num_requests_waiting",
                &model_labels("batch_probe", "1"),
            );
            (failures == Some(CANCELLED as f64) && waiting == Some(0.0)).then_some(())
        })
        .await;

    // The next request runs alone, and only it and the long one ever ran.
    let after = finish(spawn_infer(&client, probe_request(&[7.0], 0)), "after").await;
    assert_eq!(probe_result(&after), (vec![14.0], vec![1]));
    let stats = model_stats(&mut client, "batch_probe", "1").await;
    assert_eq!(
        (stats.inference_count, stats.execution_count),
        (2, 2),
        "the cancelled requests were computed: {stats:?}"
    );
    assert_eq!(batch_counts(&stats), [(1, 2)].into(), "{stats:?}");
}

#[tokio::test]
async fn a_full_queue_rejects_with_resource_exhausted_and_serves_the_accepted() {
    const REQUESTS: usize = 30;
    let (server, _repo) = probe_server(&[]).await;
    let client = server.client().await;
    let busy = occupy_instance(&server, &client).await;

    let values = distinct_values(REQUESTS, 0.0);
    let calls: Vec<Call> = values
        .iter()
        .map(|v| spawn_infer(&client, probe_request(&[*v], 0)))
        .collect();
    let (mut accepted, mut rejected) = (0, 0);
    for (call, value) in calls.into_iter().zip(&values) {
        match call.await.unwrap() {
            Ok(response) => {
                accepted += 1;
                assert_eq!(probe_result(&response).0, doubled(&[*value]));
            }
            Err(status) if status.code() == Code::ResourceExhausted => rejected += 1,
            Err(status) => panic!("request {value}: {status:?}"),
        }
    }
    assert_long_request_ran_alone(busy).await;
    assert!(
        rejected > 0,
        "30 requests behind a busy instance and a queue of 8: none rejected"
    );
    assert!(
        accepted >= 8,
        "the queue holds 8 requests, yet only {accepted} of {REQUESTS} were accepted"
    );

    let text = server.metrics().await;
    let labels = [
        ("model_name", "batch_probe"),
        ("model_version", "1"),
        ("reason", "queue_full"),
    ];
    assert_eq!(
        prometheus::sum(&text, "gridmesh_block:request_failure_total", &labels),
        Some(f64::from(rejected)),
        "{text}"
    );
}

#[tokio::test]
async fn sigterm_finishes_queued_requests_refuses_new_ones_and_exits_0() {
    const QUEUED: usize = 4;
    let (mut server, _repo) = probe_server(&["--drain-timeout", "10s"]).await;
    let mut client = server.client().await;
    let busy = occupy_instance(&server, &client).await;
    let values = distinct_values(QUEUED, 0.0);
    let queued: Vec<Call> = values
        .iter()
        .map(|v| spawn_infer(&client, probe_request(&[*v], 0)))
        .collect();
    server
        .poll("4 waiting requests", async || {
            (probe_gauge(&server, "num_requests_waiting").await == Some(QUEUED as f64))
                .then_some(())
        })
        .await;

    server.send_sigterm();
    // Readiness goes false at once (or the server no longer answers).
    server
        .poll("readiness false after SIGTERM", async || {
            let ready = client.server_ready(ServerReadyRequest {}).await;
            (!matches!(ready, Ok(r) if r.get_ref().ready)).then_some(())
        })
        .await;
    let refused = client.model_infer(probe_request(&[5.0], 0)).await;
    match refused {
        Err(status) => assert_eq!(
            status.code(),
            Code::Unavailable,
            "a request after SIGTERM: {status:?}"
        ),
        Ok(response) => panic!("a request after SIGTERM was served: {response:?}"),
    }
    // The HTTP server may already be closed; while it answers, it agrees.
    if let Ok(ready) = gridmesh_tests::process::admin_get(server.http, "/v2/health/ready").await {
        assert_eq!(ready.status, 503, "/v2/health/ready while draining");
    }
    if let Ok(metrics) = gridmesh_tests::process::admin_get(server.http, "/metrics").await {
        let labels = [("model_name", "batch_probe"), ("reason", "draining")];
        assert_eq!(
            prometheus::sum(
                &metrics.body,
                "gridmesh_block:request_failure_total",
                &labels
            ),
            Some(1.0),
            "the refused request in /metrics:\n{}",
            metrics.body
        );
    }

    assert_long_request_ran_alone(busy).await;
    for (call, value) in queued.into_iter().zip(&values) {
        let response = finish(call, &format!("queued request {value} during the drain")).await;
        assert_eq!(probe_result(&response).0, doubled(&[*value]));
    }
    let status = server.wait_exit(STOP_GRACE).await.unwrap();
    assert!(
        status.success(),
        "exit status {status}; output:\n{}",
        server.output()
    );
}
