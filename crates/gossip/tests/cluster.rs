//! In-process clusters on loopback: convergence, failure detection, leave, rejoin,
//! partitions, authentication and bad input.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shoal_gossip::{ClusterKey, MemberState, Node, NodeOptions, Versioned};
use tokio::net::{TcpListener, UdpSocket};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn options(join: &[SocketAddr]) -> NodeOptions {
    NodeOptions {
        join: join.to_vec(),
        ..NodeOptions::new()
    }
}

async fn start(options: NodeOptions) -> Node {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
    start_on(options, socket).await
}

async fn start_on(options: NodeOptions, socket: UdpSocket) -> Node {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("tcp");
    Node::start(options, socket, listener)
        .await
        .expect("node starts")
}

/// `n` nodes, each joining through the previous one (a chain, as in the seed's docker
/// example).
async fn chain(n: usize, tweak: impl Fn(NodeOptions) -> NodeOptions) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    for _ in 0..n {
        let join: Vec<SocketAddr> = nodes
            .last()
            .map(|n| vec![n.swim_addr()])
            .unwrap_or_default();
        nodes.push(start(tweak(options(&join))).await);
    }
    nodes
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn alive_count(node: &Node) -> usize {
    node.members()
        .await
        .iter()
        .filter(|m| m.state == MemberState::Alive)
        .count()
}

async fn wait_full_membership(nodes: &[Node]) {
    let n = nodes.len();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut whole = true;
        for node in nodes {
            if alive_count(node).await != n {
                whole = false;
                break;
            }
        }
        if whole {
            return;
        }
        if Instant::now() > deadline {
            let mut views = String::new();
            for node in nodes {
                let states: Vec<String> = node
                    .members()
                    .await
                    .iter()
                    .map(|m| format!("{}={:?}", m.address.port(), m.state))
                    .collect();
                views.push_str(&format!(
                    "\n  {} sees {}",
                    node.swim_addr().port(),
                    states.join(" ")
                ));
            }
            panic!("after 20s not every node sees every other alive:{views}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_value(nodes: &[&Node], value: i64, timeout: Duration) {
    wait_until(&format!("every node holds {value}"), timeout, || async {
        nodes.iter().all(|n| n.get().value == value)
    })
    .await;
}

async fn state_of(observer: &Node, addr: SocketAddr) -> Option<MemberState> {
    observer
        .members()
        .await
        .into_iter()
        .find(|m| m.address == addr)
        .map(|m| m.state)
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

#[tokio::test]
async fn five_nodes_joined_in_a_chain_converge_to_a_set_value() -> TestResult {
    let nodes = chain(5, |o| o).await;
    wait_full_membership(&nodes).await;
    for node in &nodes {
        assert_eq!(
            node.get(),
            Versioned::initial(42),
            "the seed's initial value"
        );
    }
    // Set through the HTTP API of the last node; every node has it well before the next
    // anti-entropy round (2 s), because a set is pushed to every member at once.
    let url = format!("http://{}/set/7", nodes[4].http_addr());
    let response = http().post(&url).send().await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await?, "7");
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_value(&refs, 7, Duration::from_millis(1500)).await;
    // /get on every node answers it, with the version in headers.
    for node in &nodes {
        let response = http()
            .get(format!("http://{}/get", node.http_addr()))
            .send()
            .await?;
        assert_eq!(response.headers()["x-origin"], &*nodes[4].name());
        assert_eq!(response.text().await?, "7");
    }
    // Members advertise their real HTTP addresses (no port assumed): each answers /get.
    let members = nodes[0].members().await;
    assert_eq!(members.len(), 5);
    for member in members {
        let text = http()
            .get(format!("http://{}/get", member.http))
            .send()
            .await?
            .text()
            .await?;
        assert_eq!(text, "7");
    }
    for node in nodes {
        node.leave().await;
    }
    Ok(())
}

#[tokio::test]
async fn concurrent_sets_on_two_nodes_converge_to_the_same_winner() -> TestResult {
    // A frozen clock makes the two sets carry the same generation: the worst case, decided
    // by the origin alone.
    let frozen: shoal_gossip::register::Clock = Arc::new(|| 1_800_000_000_000);
    let nodes = chain(4, |o| NodeOptions {
        clock: frozen.clone(),
        ..o
    })
    .await;
    wait_full_membership(&nodes).await;
    for round in 0..5i64 {
        let (a, b) = tokio::join!(nodes[0].set(100 + round), nodes[3].set(200 + round));
        assert_eq!(a.generation, b.generation);
        let winner = if a.is_newer_than(&b) { a } else { b };
        let refs: Vec<&Node> = nodes.iter().collect();
        wait_value(&refs, winner.value, Duration::from_secs(3)).await;
        for node in &nodes {
            assert_eq!(node.get(), winner, "every node holds the same version");
        }
    }
    // With the real clock, a set made after another wins everywhere, even where the first
    // was never seen.
    let nodes2 = chain(3, |o| o).await;
    wait_full_membership(&nodes2).await;
    nodes2[2].block(&[nodes2[0].swim_addr()]);
    nodes2[0].block(&[nodes2[2].swim_addr()]);
    nodes2[0].set(1).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    nodes2[2].set(2).await;
    nodes2[0].heal();
    nodes2[2].heal();
    let refs: Vec<&Node> = nodes2.iter().collect();
    wait_value(&refs, 2, Duration::from_secs(6)).await;
    for node in nodes.into_iter().chain(nodes2) {
        node.leave().await;
    }
    Ok(())
}

#[tokio::test]
async fn stale_replayed_and_concurrent_notifies_never_move_the_value_back() -> TestResult {
    let node = start(options(&[])).await;
    let base = format!("http://{}", node.http_addr());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let fresh = http()
        .post(format!("{base}/notify/5/{now}?notifier=test&origin=zz"))
        .send()
        .await?;
    assert_eq!(fresh.status(), 200);
    assert_eq!(fresh.headers()["x-applied"], "true");
    // The same notify again (a replay) and an older one change nothing.
    for stale in [
        format!("{base}/notify/5/{now}?notifier=test&origin=zz"),
        format!("{base}/notify/6/{}?notifier=test&origin=zz", now - 1),
        format!("{base}/notify/6/{now}?notifier=test&origin=aa"),
    ] {
        let response = http().post(&stale).send().await?;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-applied"], "false", "{stale}");
    }
    assert_eq!(node.get().value, 5);
    // An origin or notifier with a control character could not travel in `X-Origin`: refused.
    for bad in ["origin=a%0Ab", "notifier=a%0Db", "origin=%00"] {
        let response = http()
            .post(format!("{base}/notify/9/{}?{bad}", now + 1_000))
            .send()
            .await?;
        assert_eq!(response.status(), 400, "{bad}");
    }
    assert_eq!(node.get().value, 5);
    // Many concurrent notifies (the seed read the generation without the lock): the end
    // state is the highest version, whatever the interleaving.
    let mut calls = Vec::new();
    for i in 1..=200u64 {
        let url = format!("{base}/notify/{i}/{}?notifier=n{i}", now + i);
        calls.push(tokio::spawn(async move {
            http().post(&url).send().await.map(|r| r.status())
        }));
    }
    for call in calls {
        assert_eq!(call.await??, 200);
    }
    assert_eq!(node.get().value, 200);
    assert_eq!(node.get().generation, now + 200);
    node.leave().await;
    Ok(())
}

#[tokio::test]
async fn a_killed_node_is_marked_dead_by_all_others_within_the_bound() -> TestResult {
    let mut nodes = chain(4, |o| o).await;
    wait_full_membership(&nodes).await;
    let victim = nodes.remove(1);
    let addr = victim.swim_addr();
    let killed_at = Instant::now();
    victim.kill().await;
    // Probe period 1 s + suspicion 3 s + dissemination: well within 10 s.
    wait_until(
        "every node sees the killed node dead",
        Duration::from_secs(10),
        || async {
            for node in &nodes {
                if state_of(node, addr).await != Some(MemberState::Dead) {
                    return false;
                }
            }
            true
        },
    )
    .await;
    eprintln!("failure detected by all in {:?}", killed_at.elapsed());
    // The others go on: a set still reaches them all.
    nodes[0].set(11).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_value(&refs, 11, Duration::from_secs(2)).await;
    for node in nodes {
        node.leave().await;
    }
    Ok(())
}

#[tokio::test]
async fn a_node_that_leaves_is_marked_left_at_once() -> TestResult {
    let mut nodes = chain(4, |o| o).await;
    wait_full_membership(&nodes).await;
    let leaving = nodes.remove(2);
    let addr = leaving.swim_addr();
    leaving.leave().await;
    wait_until(
        "every node records the leave",
        Duration::from_secs(2),
        || async {
            for node in &nodes {
                if state_of(node, addr).await != Some(MemberState::Left) {
                    return false;
                }
            }
            true
        },
    )
    .await;
    // ... and it stays "left", not "dead", once SWIM has settled.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for node in &nodes {
        assert_eq!(state_of(node, addr).await, Some(MemberState::Left));
    }
    for node in nodes {
        node.leave().await;
    }
    Ok(())
}

#[tokio::test]
async fn a_restarted_node_rejoins_and_catches_up() -> TestResult {
    let mut nodes = chain(3, |o| o).await;
    wait_full_membership(&nodes).await;
    let victim = nodes.remove(2);
    let addr = victim.swim_addr();
    victim.kill().await;
    nodes[0].set(99).await;
    // Restart on the same cluster address, joining through node 0.
    let socket = UdpSocket::bind(addr).await?;
    let restarted = start_on(options(&[nodes[0].swim_addr()]), socket).await;
    wait_value(&[&restarted], 99, Duration::from_secs(3)).await;
    nodes.push(restarted);
    wait_until(
        "the others see the restarted node alive",
        Duration::from_secs(10),
        || async {
            state_of(&nodes[0], addr).await == Some(MemberState::Alive)
                && state_of(&nodes[1], addr).await == Some(MemberState::Alive)
        },
    )
    .await;
    // Its own writes win again: its clock has moved on since its first life.
    nodes[2].set(100).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_value(&refs, 100, Duration::from_secs(2)).await;
    for node in nodes {
        node.leave().await;
    }
    Ok(())
}

#[tokio::test]
async fn a_partitioned_cluster_converges_after_healing() -> TestResult {
    let nodes = chain(6, |o| o).await;
    wait_full_membership(&nodes).await;
    let (left, right) = nodes.split_at(3);
    let left_addrs: Vec<SocketAddr> = left.iter().map(Node::swim_addr).collect();
    let right_addrs: Vec<SocketAddr> = right.iter().map(Node::swim_addr).collect();
    for node in left {
        node.block(&right_addrs);
    }
    for node in right {
        node.block(&left_addrs);
    }
    // Each side writes its own value, and only its side sees it.
    left[0].set(1_000).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    right[1].set(2_000).await;
    let left_refs: Vec<&Node> = left.iter().collect();
    let right_refs: Vec<&Node> = right.iter().collect();
    wait_value(&left_refs, 1_000, Duration::from_secs(2)).await;
    wait_value(&right_refs, 2_000, Duration::from_secs(2)).await;
    // Long enough for each side to declare the other dead.
    wait_until(
        "each side sees the other dead",
        Duration::from_secs(15),
        || async {
            state_of(&left[0], right_addrs[0]).await == Some(MemberState::Dead)
                && state_of(&right[0], left_addrs[0]).await == Some(MemberState::Dead)
        },
    )
    .await;
    assert_eq!(left[2].get().value, 1_000);
    for node in &nodes {
        node.heal();
    }
    // The later write wins everywhere, and membership comes back whole.
    let healed = Instant::now();
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_value(&refs, 2_000, Duration::from_secs(15)).await;
    eprintln!("value converged {:?} after healing", healed.elapsed());
    wait_full_membership(&nodes).await;
    eprintln!("membership whole {:?} after healing", healed.elapsed());
    for node in nodes {
        node.leave().await;
    }
    Ok(())
}

#[tokio::test]
async fn a_cluster_key_keeps_strangers_and_unsigned_notifies_out() -> TestResult {
    let key: ClusterKey = "correct horse battery staple".parse()?;
    let keyed = |o: NodeOptions| NodeOptions {
        cluster_key: Some(key.clone()),
        ..o
    };
    let nodes = chain(3, keyed).await;
    wait_full_membership(&nodes).await;
    nodes[0].set(5).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_value(&refs, 5, Duration::from_secs(2)).await;

    // A node with another key, and one with none, cannot join.
    let stranger = start(NodeOptions {
        cluster_key: Some("another key, also long".parse()?),
        ..options(&[nodes[0].swim_addr()])
    })
    .await;
    let keyless = start(options(&[nodes[0].swim_addr()])).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(alive_count(&stranger).await, 1, "the stranger stays alone");
    assert_eq!(
        alive_count(&keyless).await,
        1,
        "the keyless node stays alone"
    );
    assert_eq!(alive_count(&nodes[0]).await, 3);
    assert!(nodes[0].stats().packets_unauthenticated >= 2);
    // Nor can they change the value by pushing.
    keyless.set(666).await;
    stranger.set(667).await;

    // /notify: unsigned and wrongly signed calls are 401 and change nothing.
    let base = format!("http://{}", nodes[1].http_addr());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let url = format!("{base}/notify/777/{now}?notifier=x&origin=x");
    let unsigned = http().post(&url).send().await?;
    assert_eq!(unsigned.status(), 401);
    assert!(unsigned.text().await?.starts_with("Error: "));
    let wrong: ClusterKey = "not the cluster key!".parse()?;
    let forged = http()
        .post(&url)
        .header("x-shoal-signature", wrong.sign_notify(777, now, "x"))
        .send()
        .await?;
    assert_eq!(forged.status(), 401);
    assert_eq!(nodes[1].stats().notifies_unauthenticated, 2);
    assert_eq!(nodes[1].get().value, 5);
    // Correctly signed, it is applied and spread.
    let signed = http()
        .post(&url)
        .header("x-shoal-signature", key.sign_notify(777, now, "x"))
        .send()
        .await?;
    assert_eq!(signed.status(), 200);
    wait_value(&refs, 777, Duration::from_secs(2)).await;
    for node in nodes.into_iter().chain([stranger, keyless]) {
        node.leave().await;
    }
    Ok(())
}

#[tokio::test]
async fn bad_http_input_is_a_4xx_and_changes_nothing() -> TestResult {
    let node = start(options(&[])).await;
    let base = format!("http://{}", node.http_addr());
    let far_future = u64::MAX;
    let cases: Vec<(reqwest::Method, String, u16)> = vec![
        (reqwest::Method::POST, "/set/abc".into(), 400),
        (reqwest::Method::POST, "/set/1.5".into(), 400),
        (
            reqwest::Method::POST,
            "/set/9223372036854775808".into(),
            400,
        ),
        (
            reqwest::Method::POST,
            "/set/-9223372036854775809".into(),
            400,
        ),
        (reqwest::Method::POST, "/set/".into(), 404),
        (reqwest::Method::DELETE, "/set/5".into(), 405),
        (reqwest::Method::POST, "/notify/x/1".into(), 400),
        (reqwest::Method::POST, "/notify/1/-1".into(), 400),
        (
            reqwest::Method::POST,
            "/notify/1/18446744073709551616".into(),
            400,
        ),
        (
            reqwest::Method::POST,
            format!("/notify/1/{far_future}?notifier=evil"),
            422,
        ),
        (reqwest::Method::GET, "/notify/1/1".into(), 405),
        (
            reqwest::Method::POST,
            "/notify/1/1?notifier=%ZZ".into(),
            400,
        ),
        // The seed's article tests /get/5, which never existed.
        (reqwest::Method::GET, "/get/5".into(), 404),
    ];
    for (method, path, status) in cases {
        let response = http()
            .request(method.clone(), format!("{base}{path}"))
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        let body = response.text().await?;
        assert!(body.starts_with("Error: "), "{method} {path}: {body}");
    }
    assert_eq!(node.get(), Versioned::initial(42));
    // A forged far-future generation did not drag the clock: a set still wins afterwards.
    assert_eq!(node.stats().versions_too_far_ahead, 1);
    // Extremes of i64 are fine.
    for value in [i64::MIN, i64::MAX] {
        let response = http().post(format!("{base}/set/{value}")).send().await?;
        assert_eq!(response.text().await?, value.to_string());
        assert_eq!(node.get().value, value);
    }
    // GET /set still works for the seed's clients, marked deprecated.
    let response = http().get(format!("{base}/set/5")).send().await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["deprecation"], "true");
    assert_eq!(node.get().value, 5);
    // JSON on request.
    let json: serde_json::Value = http()
        .get(format!("{base}/get"))
        .header("accept", "application/json")
        .send()
        .await?
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b))??;
    assert_eq!(json["value"], 5);
    assert_eq!(json["origin"], &*node.name());
    node.leave().await;
    Ok(())
}

#[tokio::test]
async fn garbage_datagrams_are_counted_and_harmless() -> TestResult {
    let nodes = chain(2, |o| o).await;
    wait_full_membership(&nodes).await;
    let target = nodes[0].swim_addr();
    let attacker = UdpSocket::bind("127.0.0.1:0").await?;
    let seed = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    let next = || {
        // xorshift: deterministic noise without a dependency.
        let mut x = seed.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        seed.store(x, Ordering::Relaxed);
        x
    };
    let before = nodes[0].stats();
    let mut sent = 0u64;
    for len in [0usize, 1, 2, 3, 17, 100, 1400, 9000] {
        for _ in 0..20 {
            let mut packet: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            attacker.send_to(&packet, target).await?;
            // Right magic, every kind, garbage payload: reaches the decoders.
            if len >= 2 {
                packet[0] = shoal_gossip::wire::MAGIC;
                packet[1] = (next() % 5) as u8;
                attacker.send_to(&packet, target).await?;
                sent += 1;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // Let the node read them all (loopback does not lose datagrams sent this slowly).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = nodes[0].stats();
    let received = after.packets_received - before.packets_received;
    let refused =
        after.packets_malformed + after.swim_errors - before.packets_malformed - before.swim_errors;
    assert!(
        received >= sent,
        "every datagram was read: {received} of {sent}"
    );
    // A few random packets are well-formed by chance (an empty state request is valid),
    // and real SWIM traffic from the other node is counted as received too.
    assert!(
        refused >= sent * 9 / 10,
        "garbage is counted: {refused} of {sent}: {after:?}"
    );
    // The node still works.
    nodes[1].set(3).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_value(&refs, 3, Duration::from_secs(2)).await;
    assert_eq!(alive_count(&nodes[0]).await, 2);
    let stats: serde_json::Value = http()
        .get(format!("http://{}/stats", nodes[0].http_addr()))
        .send()
        .await?
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b))??;
    assert!(stats["packets_malformed"].as_u64() >= Some(1));
    for node in nodes {
        node.leave().await;
    }
    Ok(())
}

#[tokio::test]
async fn anti_entropy_alone_reaches_every_member() -> TestResult {
    // With the immediate push off, only the periodic /notify rounds carry a set: each node
    // must pick distinct random members every round (the seed's goroutines captured the
    // loop variable and notified the wrong ones), check the answers, and keep going.
    let nodes = chain(6, |o| NodeOptions {
        push_on_set: false,
        interval: Duration::from_millis(200),
        ..o
    })
    .await;
    wait_full_membership(&nodes).await;
    nodes[3].set(31).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_value(&refs, 31, Duration::from_secs(10)).await;
    for node in nodes {
        node.leave().await;
    }
    Ok(())
}

#[tokio::test]
async fn an_acknowledged_set_survives_the_kill_of_the_node_that_took_it() -> TestResult {
    // The set is pushed to every member before /set answers: once acknowledged, losing the
    // node that took it (kill -9, no leave, no further anti-entropy from it) loses nothing.
    let mut nodes = chain(4, |o| o).await;
    wait_full_membership(&nodes).await;
    let taker = nodes.remove(1);
    let response = http()
        .post(format!("http://{}/set/4711", taker.http_addr()))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    taker.kill().await;
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_value(&refs, 4711, Duration::from_secs(1)).await;
    for node in nodes {
        node.leave().await;
    }
    Ok(())
}
