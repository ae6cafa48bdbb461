//! Unit tests of the protocol loop's shared state: host calls when the host dies or a request is
//! over the frame limit, and pipelined publishing (`Context::post`): events leave in order without
//! waiting for answers, and a refused one is counted and logged rather than lost silently.

use super::*;

use koi_protocol::frame::FrameQueue;

fn shared() -> (Arc<Shared>, outbound::Inbox) {
    let (out, rx) = outbound::channel(outbound::BUDGET);
    (Arc::new(Shared::new(out, "t")), rx)
}

#[tokio::test]
async fn closing_fails_a_host_call_awaiting_its_reply_and_every_later_one() {
    let (shared, mut sent) = shared();
    let waiting = tokio::spawn({
        let shared = shared.clone();
        async move {
            shared
                .request("host/prompt", Value::Null, Lane::Priority)
                .await
        }
    });
    // The request went out; no reply will come (the host died).
    assert!(sent.next().await.is_some());
    shared.close();
    let outcome = waiting.await.expect("task");
    assert_eq!(
        outcome.expect_err("no reply").code,
        codes::PLUGIN_UNAVAILABLE
    );
    let later = shared
        .request("host/prompt", Value::Null, Lane::Priority)
        .await;
    assert_eq!(later.expect_err("closed").code, codes::PLUGIN_UNAVAILABLE);
}

#[tokio::test]
async fn a_host_call_over_the_frame_limit_fails_at_once_instead_of_waiting_forever() {
    let (shared, _sent) = shared();
    shared.max_frame.store(64, Ordering::Relaxed);
    let params = serde_json::json!({"topic": "t.big", "payload": "x".repeat(100)});
    for lane in [Lane::Priority, Lane::Budgeted] {
        let outcome = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            shared.request(calls::PUBLISH, params.clone(), lane),
        )
        .await
        .expect("an unsendable request must fail, not wait for an answer that cannot come");
        let error = outcome.expect_err("over the limit");
        assert_eq!(error.code, codes::FRAME_TOO_LARGE);
        assert!(error.message.contains("64-byte"), "{}", error.message);
    }
    assert!(lock(&shared.pending).is_empty(), "no call is left pending");
}

/// What `ctx.post` sent: (id, topic, n) of every `host/publish` frame queued so far.
fn posted(inbox: &mut outbound::Inbox) -> Vec<(String, String, u64)> {
    let mut frames = Vec::new();
    while let Some(body) = inbox.ready() {
        let message = Message::parse(&body).expect("a valid frame");
        let Message::Request {
            id: Id::String(id),
            method,
            params,
        } = message
        else {
            panic!("not a posted request: {message:?}");
        };
        assert_eq!(method, calls::PUBLISH);
        let topic = params["topic"].as_str().expect("topic").to_owned();
        let n = params["payload"]["n"].as_u64().expect("n");
        frames.push((id, topic, n));
    }
    frames
}

fn detached(shared: &Arc<Shared>) -> Context {
    Context {
        shared: shared.clone(),
        request: None,
        cancel: CancellationToken::new(),
        call: None,
    }
}

/// 2000 alternating appeared/removed events posted by one task while the test plays the host,
/// reading frames and answering them only in batches: the frames leave in the order posted, each
/// with its own id, and `post` runs ahead of the answers — up to the window, which holds exactly
/// [`crate::post::WINDOW`] unanswered events (full once the host stops answering) and is whole
/// again once every answer is in. An awaited call made meanwhile still gets its own answer.
#[tokio::test]
async fn posted_events_leave_in_order_ahead_of_their_answers_within_the_window() {
    const EVENTS: u64 = 2000;
    let (shared, mut inbox) = shared();
    let ctx = detached(&shared);
    let topic_of = |n: u64| {
        if n % 2 == 0 {
            "t.removed"
        } else {
            "t.appeared"
        }
    };
    let producer = tokio::spawn(async move {
        for n in 1..=EVENTS {
            ctx.post(topic_of(n), &serde_json::json!({ "n": n }))
                .await
                .expect("posted");
        }
    });
    let mut sent: Vec<(String, String, u64)> = Vec::new();
    let mut answered = 0;
    while sent.len() < EVENTS as usize {
        let Some(first) = inbox.next().await else {
            panic!("the queue closed after {} events", sent.len());
        };
        let message = Message::parse(&first).expect("frame");
        let Message::Request {
            id: Id::String(id),
            params,
            ..
        } = message
        else {
            panic!("not a posted request: {message:?}");
        };
        let n = params["payload"]["n"].as_u64().expect("n");
        sent.push((id, params["topic"].as_str().expect("topic").into(), n));
        sent.extend(posted(&mut inbox));
        // The host answers only when the producer has filled the window: post did not wait.
        if shared.posts.free() == 0 {
            for (id, ..) in &sent[answered..] {
                shared.answer(
                    Id::String(id.clone()),
                    Ok(serde_json::json!({"delivered": 1})),
                );
            }
            answered = sent.len();
        }
    }
    assert!(answered > 0, "the window filled at least once");
    tokio::time::timeout(std::time::Duration::from_secs(30), producer)
        .await
        .expect("the producer finished")
        .expect("task");
    for (id, ..) in &sent[answered..] {
        shared.answer(
            Id::String(id.clone()),
            Ok(serde_json::json!({"delivered": 1})),
        );
    }
    let order: Vec<u64> = sent.iter().map(|(_, _, n)| *n).collect();
    assert_eq!(order, (1..=EVENTS).collect::<Vec<_>>(), "posted order kept");
    assert!(sent.iter().all(|(_, topic, n)| topic == topic_of(*n)));
    let ids: std::collections::HashSet<&str> = sent.iter().map(|(id, ..)| id.as_str()).collect();
    assert_eq!(
        ids.len(),
        EVENTS as usize,
        "every posted request has its own id"
    );
    assert_eq!(
        shared.posts.free(),
        crate::post::WINDOW,
        "every place came back"
    );
    assert_eq!(shared.posts.refused(), 0);
    let awaited = tokio::spawn({
        let shared = shared.clone();
        async move {
            shared
                .request("host/prompt", Value::Null, Lane::Priority)
                .await
        }
    });
    let body = inbox.next().await.expect("the awaited request");
    let Message::Request { id, .. } = Message::parse(&body).expect("frame") else {
        panic!("expected the awaited request");
    };
    shared.answer(id, Ok(serde_json::json!({"value": "ok"})));
    let answer = awaited.await.expect("task").expect("answered");
    assert_eq!(answer["value"], "ok");
}

/// With the window full and the host gone, a waiting `post` fails instead of waiting forever.
#[tokio::test]
async fn a_post_waiting_for_the_window_fails_when_the_connection_ends() {
    let (shared, _inbox) = shared();
    let ctx = detached(&shared);
    for n in 0..crate::post::WINDOW {
        ctx.post("t.tick", &n).await.expect("posted");
    }
    let waiting = tokio::spawn({
        let ctx = ctx.clone();
        async move { ctx.post("t.tick", &0).await }
    });
    shared.close();
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(30), waiting)
        .await
        .expect("post gave up")
        .expect("task");
    assert_eq!(
        outcome.expect_err("host gone").code(),
        codes::PLUGIN_UNAVAILABLE
    );
}

/// A log sink for one test: everything logged at warn or above while it is the default.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The host refuses a posted event (here: its schema check failed). Nobody awaits the answer, so
/// the SDK must count it and log it at warn with the host's reason — not drop it — while
/// accepted answers log nothing.
#[test]
fn a_refused_post_is_counted_and_logged_not_lost() {
    let (out, _inbox) = outbound::channel(outbound::BUDGET);
    let shared = Shared::new(out, "t");
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        shared.answer(
            Id::String("post-0".into()),
            Ok(serde_json::json!({"delivered": 1})),
        );
        shared.answer(
            Id::String("post-1".into()),
            Err(ErrorObject::new(
                codes::SCHEMA_VIOLATION,
                "koi-t published `t.tick` whose payload breaks its schema at /n",
            )
            .with_hint("Fix the payload.")),
        );
    });
    assert_eq!(shared.posts.refused(), 1);
    let log = String::from_utf8(lock(&sink.0).clone()).expect("utf-8");
    assert!(log.contains("WARN"), "{log}");
    assert!(log.contains("refused an event sent with ctx.post"), "{log}");
    assert!(log.contains("breaks its schema at /n"), "{log}");
    assert!(log.contains("Fix the payload."), "{log}");
    assert!(log.contains("post-1") && !log.contains("post-0"), "{log}");
}
