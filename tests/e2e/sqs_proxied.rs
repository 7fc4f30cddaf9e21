//! SQS through an egress proxy: the agent's other transport, end to end.

use std::time::Duration;

use crate::sqs_scaling::{replicas, rule};
use crate::support::agent::Agent;
use crate::support::cluster::Cluster;
use crate::support::eventually;
use crate::support::moto::Moto;
use crate::support::sqs_proxy::SqsProxy;

/// The proxied path (reqwest, which the agent takes only for an endpoint the proxy variables send
/// through a proxy): the polls must go through the proxy and still scale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_behind_an_http_proxy_is_polled_through_it() {
    let moto = Moto::start();
    // A forward proxy too: it sends each request's path to moto, whatever the absolute URI says.
    let proxy = SqsProxy::start(moto.endpoint()).await;
    let kube = Cluster::start().await;
    kube.create_deployment(kube.namespace(), "proxied", 0);
    let queue = moto.create_queue("proxied").await;
    moto.send(&queue, 12).await;
    let agent = Agent::start_in_behind_proxy(
        &rule("proxied", "Deployment", &queue, &moto.endpoint(), ""),
        &kube,
        &proxy.endpoint(),
    );
    let took = eventually(Duration::from_secs(10), || {
        replicas(&kube, "Deployment", "proxied") == 3
    })
    .await;
    assert!(
        took.is_some(),
        "12 messages / 5 per replica -> 3 through the proxy\n{}",
        agent.logs()
    );
    let calls = proxy.count("GetQueueAttributes");
    assert!(
        calls > 0,
        "no GetQueueAttributes reached the proxy: the agent went around it\n{}",
        agent.logs()
    );
}
