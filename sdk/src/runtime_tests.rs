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

/// 1000 events posted while the host answers none of them: every `post` returns (it does not
/// wait for an answer), the frames leave in the order posted with distinct ids, and an
/// answer's arrival later does not disturb awaited calls.
#[tokio::test]
async fn posted_events_leave_in_order_without_waiting_for_answers() {
    let (shared, mut inbox) = shared();
    let ctx = Context {
        shared: shared.clone(),
        request: None,
        cancel: CancellationToken::new(),
        call: None,
    };
    let mut sent = Vec::new();
    for n in 1..=1000_u64 {
        let topic = if n % 2 == 0 {
            "t.removed"
        } else {
            "t.appeared"
        };
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            ctx.post(topic, &serde_json::json!({ "n": n })),
        )
        .await
        .expect("post must not wait for the host's answer")
        .expect("posted");
        // Drain as a writer would, so the budget is never the limit here.
        sent.extend(posted(&mut inbox));
    }
    sent.extend(posted(&mut inbox));
    let order: Vec<u64> = sent.iter().map(|(_, _, n)| *n).collect();
    assert_eq!(order, (1..=1000).collect::<Vec<_>>(), "posted order kept");
    assert!(sent.iter().all(|(_, topic, n)| topic
        == if n % 2 == 0 {
            "t.removed"
        } else {
            "t.appeared"
        }));
    let ids: std::collections::HashSet<&str> = sent.iter().map(|(id, ..)| id.as_str()).collect();
    assert_eq!(ids.len(), 1000, "every posted request has its own id");
    // Their answers arrive later; they need no pending entry, and an awaited call still gets its
    // own answer.
    let awaited = tokio::spawn({
        let shared = shared.clone();
        async move {
            shared
                .request("host/prompt", Value::Null, Lane::Priority)
                .await
        }
    });
    let request = loop {
        if let Some(body) = inbox.next().await {
            break Message::parse(&body).expect("frame");
        }
    };
    let Message::Request { id, .. } = request else {
        panic!("expected the awaited request");
    };
    for (post_id, ..) in &sent {
        shared.answer(
            Id::String(post_id.clone()),
            Ok(serde_json::json!({"delivered": 1})),
        );
    }
    shared.answer(id, Ok(serde_json::json!({"value": "ok"})));
    let answer = awaited.await.expect("task").expect("answered");
    assert_eq!(answer["value"], "ok");
    assert_eq!(shared.posts.refused(), 0);
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
