//! Live membership with real processes: a cluster publisher and subscribers that are not in the
//! configuration join at run time and serve viewers; then one subscriber is killed (SIGKILL) and
//! another leaves (SIGTERM) while viewers watch. Every viewer registers again, lands on the
//! subscriber that is left, resumes with `since`, and ends up with every epoch exactly once, byte
//! for byte as the main publisher emitted it.

mod common;

use common::{broadcaster, config, http, DEADLINE};
use emostream_protocol::synthetic::frame as synthetic_frame;
use emostream_protocol::wire::{Admission, TopologyView};
use emostream_testkit::{free_port, wait_for, Scratch};
use futures_util::StreamExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

/// The synthetic source's window: short, so the test sees many epochs quickly; the ring (60)
/// still covers 12 s, far longer than a reconnect takes.
const EVERY_MS: u64 = 200;

/// What one viewer received: (epoch, frame text, subscriber it came from), in order.
type Received = Arc<Mutex<Vec<(u64, String, String)>>>;

/// A viewer as a real client would be: register, watch, and on any loss register again and
/// resume after the last epoch it has.
fn resuming_viewer(main: String, user: usize) -> Received {
    let received: Received = Arc::default();
    let log = Arc::clone(&received);
    tokio::spawn(async move {
        loop {
            let body = format!(r#"{{"user_id":"viewer-{user}"}}"#);
            let admission = match http(&main, "POST", "/v1/viewers", &body).await {
                Some((200, body)) => serde_json::from_str::<Admission>(&body).unwrap(),
                _ => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let last = log.lock().unwrap().last().map(|(epoch, _, _)| *epoch);
            let since = last.map(|e| format!("?since={e}")).unwrap_or_default();
            let url = format!(
                "{}/v1/streams/main/ws{since}",
                admission.assignment.subscriber
            );
            let Ok((mut socket, _)) = connect_async(url).await else {
                // Registered to a subscriber that has just died: the main publisher hears of it
                // within a heartbeat or two.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            while let Some(Ok(msg)) = socket.next().await {
                if let Message::Text(text) = msg {
                    let head: serde_json::Value = serde_json::from_str(&text).unwrap();
                    // The synthetic source's trend frames are state beside the epochs; resume
                    // and gaps are about epoch frames.
                    if head["type"] != "epoch" {
                        assert!(
                            ["trending", "sentiment", "popular"]
                                .contains(&head["type"].as_str().unwrap()),
                            "nobody lags here: {text}"
                        );
                        continue;
                    }
                    let epoch = head["epoch"].as_u64().unwrap();
                    let from = admission.assignment.subscriber_name.clone();
                    log.lock().unwrap().push((epoch, text.to_string(), from));
                }
            }
        }
    });
    received
}

fn newest_from(received: &Received, subscriber: &str) -> Option<u64> {
    received
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|(_, _, from)| from == subscriber)
        .map(|(e, _, _)| *e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_leave_and_die_while_viewers_watch() {
    let scratch = Scratch::new("broadcaster-membership");
    let addr = |port: u16| format!("127.0.0.1:{port}");
    let (main, c0, c0_s0) = (addr(free_port()), addr(free_port()), addr(free_port()));
    let (cx, cx_s0, c0_late) = (addr(free_port()), addr(free_port()), addr(free_port()));
    // Only c0 and its first subscriber are configured; the rest join at run time.
    let config = config(
        &scratch,
        &format!(
            "[broadcaster]\nmain = \"{main}\"\n\
         [[broadcaster.clusters]]\nname = \"c0\"\nlisten = \"{c0}\"\nsubscribers = [\"{c0_s0}\"]\n"
        ),
    );
    let every = EVERY_MS.to_string();
    let _main = broadcaster(
        &scratch,
        &config,
        "main",
        &["main", "--synthetic-ms", &every],
    );
    let _c0 = broadcaster(&scratch, &config, "c0", &["cluster", "--name", "c0"]);
    let mut s0 = broadcaster(
        &scratch,
        &config,
        "c0-s0",
        &["subscriber", "--name", "c0-s0"],
    );
    let _cx = broadcaster(
        &scratch,
        &config,
        "cx",
        &["cluster", "--name", "cx", "--listen", &cx],
    );
    let mut cx_sub = broadcaster(
        &scratch,
        &config,
        "cx-s0",
        &[
            "subscriber",
            "--name",
            "cx-s0",
            "--listen",
            &cx_s0,
            "--upstream",
            &cx,
        ],
    );
    let _late = broadcaster(
        &scratch,
        &config,
        "c0-late",
        &[
            "subscriber",
            "--name",
            "c0-late",
            "--listen",
            &c0_late,
            "--upstream",
            &c0,
        ],
    );

    let members = |view: &TopologyView| -> Vec<(String, Vec<String>)> {
        view.clusters
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    c.subscribers.iter().map(|s| s.name.clone()).collect(),
                )
            })
            .collect()
    };
    let topology = || async {
        let (status, body) = http(&main, "GET", "/v1/topology", "").await?;
        (status == 200).then(|| serde_json::from_str::<TopologyView>(&body).unwrap())
    };
    let all_joined = vec![
        (
            "c0".to_string(),
            vec!["c0-late".to_string(), "c0-s0".to_string()],
        ),
        ("cx".to_string(), vec!["cx-s0".to_string()]),
    ];
    wait_for("every member in the topology", DEADLINE, || async {
        topology().await.filter(|v| members(v) == all_joined)
    })
    .await;

    // Six viewers, placed two per subscriber by load; each sees a few epochs where it landed.
    let viewers: Vec<Received> = (0..6).map(|i| resuming_viewer(main.clone(), i)).collect();
    wait_for("every viewer watching", DEADLINE, || async {
        viewers
            .iter()
            .all(|v| v.lock().unwrap().len() >= 3)
            .then_some(())
    })
    .await;
    let mut landed: Vec<String> = viewers
        .iter()
        .map(|v| v.lock().unwrap()[0].2.clone())
        .collect();
    landed.sort();
    assert_eq!(
        landed,
        ["c0-late", "c0-late", "c0-s0", "c0-s0", "cx-s0", "cx-s0"]
    );
    // Viewer counts travel up with the heartbeats, a second per tier.
    wait_for("six viewers in the topology", DEADLINE, || async {
        topology().await.filter(|v| v.viewers == 6)
    })
    .await;

    // One subscriber dies on the spot, another leaves cleanly.
    s0.signal_and_wait(libc::SIGKILL);
    cx_sub.signal_and_wait(libc::SIGTERM);
    let after = viewers
        .iter()
        .filter_map(|v| v.lock().unwrap().last().map(|(e, _, _)| *e))
        .max()
        .unwrap();
    wait_for(
        "every viewer moved to c0-late and 20 epochs on",
        DEADLINE,
        || async {
            viewers
                .iter()
                .all(|v| newest_from(v, "c0-late").is_some_and(|e| e >= after + 20))
                .then_some(())
        },
    )
    .await;
    wait_for("the topology without the departed", DEADLINE, || async {
        let want = vec![
            ("c0".to_string(), vec!["c0-late".to_string()]),
            ("cx".to_string(), vec![]),
        ];
        topology().await.filter(|v| members(v) == want)
    })
    .await;

    for (i, viewer) in viewers.iter().enumerate() {
        let received = viewer.lock().unwrap();
        let first = received[0].0;
        let epochs: Vec<u64> = received.iter().map(|(e, _, _)| *e).collect();
        let want: Vec<u64> = (first..first + epochs.len() as u64).collect();
        assert_eq!(epochs, want, "viewer {i}: every epoch once, in order");
        for (epoch, text, _) in received.iter() {
            assert_eq!(
                *text,
                synthetic_frame("main", *epoch, EVERY_MS),
                "viewer {i}"
            );
        }
    }
}
