//! Every JSON shape that crosses a process boundary.
//!
//! Gateway bodies ([`SendEmoji`], [`EmojiIn`], [`Accepted`], [`ErrorBody`]), the line format of
//! `emoji-events` batch records ([`EmojiEvent`]), the closed-epoch frame on `emoji-epochs` and to
//! viewers ([`EpochFrame`]), the notices viewers get besides frames ([`ViewerNotice`]), viewer
//! registration ([`Register`], [`Assignment`]) and the messages a broadcaster tier sends to the
//! tier above it ([`LinkUp`], [`Subscribe`]) and gets back ([`Synced`]).

use serde::{Deserialize, Serialize};

/// A stream id is `[a-z0-9_-]{1,64}`: safe in a URL path, a Kafka key and a metric label. The
/// gateway refuses taps for any other id, so no tier can ever hold epochs of one.
pub fn is_stream_id(stream: &str) -> bool {
    (1..=64).contains(&stream.len())
        && stream
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The client's own timestamp: ISO-8601 text as sent, or Unix milliseconds (the gateway turns a
/// number in Unix seconds, a float included, into milliseconds). Kept, never used for windowing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum ClientTs {
    Millis(u64),
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    Iso(String),
}

/// The seeds' body for `POST /send_emoji`, unchanged so their clients and load tests still work.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SendEmoji {
    pub user_id: SeedUserId,
    /// One emoji of Unicode's RGI list (ZWJ sequences, skin tones, flags, keycaps included;
    /// unqualified forms are taken as the fully-qualified one).
    #[cfg_attr(feature = "openapi", schema(max_length = 64))]
    pub emoji_type: String,
    /// ISO-8601 / RFC 3339 date-time (`T` or space, zone optional, at most 64 bytes), or a
    /// number: Unix seconds below 10^11 (a float such as Python's `time.time()` included), Unix
    /// milliseconds from there on.
    #[serde(default)]
    pub timestamp: Option<ClientTs>,
}

/// The seeds' user id: 1 to 128 visible characters, or an integer (taken as its decimal text,
/// so `42` and `"42"` are one user).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum SeedUserId {
    Text(String),
    Integer(i64),
}

/// One emoji in `POST /v1/streams/{stream}/emojis` (the stream comes from the path).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EmojiIn {
    /// 1 to 128 visible characters.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 128))]
    pub user_id: String,
    /// One emoji of Unicode's RGI list, as in [`SendEmoji`].
    #[cfg_attr(feature = "openapi", schema(max_length = 64))]
    pub emoji: String,
    #[serde(default)]
    pub timestamp: Option<ClientTs>,
}

/// The gateway's 202: how many emojis the broker acknowledged, and the epoch they count in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Accepted {
    /// Emojis taken.
    pub accepted: u64,
    /// floor(receive time ms / window_ms): the epoch they count in.
    pub epoch: u64,
}

/// The 200 of the seeds' `POST /send_emoji`: their `status` field, then [`Accepted`]'s. Their
/// clients treat any other status than 200 as a failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SeedAccepted {
    /// Always `accepted`.
    pub status: String,
    /// Emojis taken: 1.
    pub accepted: u64,
    /// floor(receive time ms / window_ms): the epoch it counts in.
    pub epoch: u64,
}

impl From<Accepted> for SeedAccepted {
    fn from(a: Accepted) -> Self {
        SeedAccepted {
            status: "accepted".into(),
            accepted: a.accepted,
            epoch: a.epoch,
        }
    }
}

/// Every 4xx/5xx body: what went wrong, and which field (when one is to blame).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: String,
    /// The field to blame, e.g. `user_id` or `items[3].emoji`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// One line of an `emoji-events` batch record (NDJSON, one event per line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmojiEvent<'a> {
    #[serde(borrow)]
    pub stream: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub user_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub emoji: std::borrow::Cow<'a, str>,
    /// The client's timestamp, as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<ClientTs>,
    /// The gateway's receive time, Unix ms: the only clock that decides the epoch.
    pub recv_ms: u64,
    /// The `Idempotency-Key` the client sent with the request, on every tap of it: a client
    /// that resends a request after an answer that may have landed sends the same key, so a
    /// reader of the log can tell the copies apart.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<std::borrow::Cow<'a, str>>,
    /// With `request_id`: a number the gateway draws for each request it takes (an attempt), the
    /// same on every tap of it, so that two copies of one request packed into one record can
    /// still be told apart. The dataflow counts a key's taps once: those of the attempt that
    /// reached the log first (dataflow/src/dedupe.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u64>,
}

/// The frame type tag, so viewers can tell frames apart as more kinds appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameType {
    Epoch,
}

/// One emoji's raw and scaled count in a closed epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmojiCount {
    pub emoji: String,
    pub count: u64,
    pub scaled: u64,
}

/// A closed epoch of one stream: the value on `emoji-epochs` (key: the stream) and the frame every
/// viewer receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochFrame {
    #[serde(rename = "type")]
    pub kind: FrameType,
    pub stream: String,
    pub epoch: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    /// Raw taps in this epoch, late ones included.
    pub total: u64,
    /// Taps that arrived after their own epoch had closed and were folded into this one.
    pub late: u64,
    /// The `epochs.max_frame_emojis` most tapped emojis, ordered by count, highest first, then
    /// by emoji (its UTF-8 bytes, lowest first), so a re-published epoch is byte-identical.
    pub emojis: Vec<EmojiCount>,
    /// The emojis of the epoch past that bound, summed; absent when every emoji is listed. Any
    /// client can tap every RGI emoji once an epoch: listing them all would make every viewer's
    /// frame 180 KB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other: Option<OtherEmojis>,
}

/// The emojis an epoch frame leaves out, summed, in the same units as [`EmojiCount`]: so
/// `total` = Σ `emojis[].count` + `other.count`, and `other.scaled` is what their `scaled`
/// values would have added up to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtherEmojis {
    /// How many distinct emojis are summed here (at least 1).
    pub distinct: u64,
    /// Their raw taps.
    pub count: u64,
    /// Σ `max(1, count / divisor)` over them, each reduced on its own as if it were listed.
    pub scaled: u64,
}

impl EpochFrame {
    /// The most bytes an epoch frame with at most `max_emojis` listed emojis can take as JSON:
    /// a 64-byte stream id, every number at its widest (20 digits), every listed emoji the
    /// longest RGI one (35 bytes) and an `other` part. What a viewer is sent for one epoch,
    /// whatever clients tap.
    pub const fn max_bytes(max_emojis: usize) -> usize {
        // `{"type":"epoch","stream":"`, the id, `","epoch":`, …, `,"emojis":[`, `]`, `}`.
        const HEAD: usize = r#"{"type":"epoch","stream":""#.len()
            + 64
            + r#"","epoch":"#.len()
            + 20
            + r#","start_ms":"#.len()
            + 20
            + r#","end_ms":"#.len()
            + 20
            + r#","total":"#.len()
            + 20
            + r#","late":"#.len()
            + 20
            + r#","emojis":["#.len()
            + "]".len()
            + "}".len();
        // `{"emoji":"…","count":…,"scaled":…}` and the comma before all but the first.
        const ENTRY: usize = r#"{"emoji":""#.len()
            + MAX_RGI_EMOJI_BYTES
            + r#"","count":"#.len()
            + 20
            + r#","scaled":"#.len()
            + 20
            + "}".len()
            + ",".len();
        const OTHER: usize = r#","other":{"distinct":"#.len()
            + 20
            + r#","count":"#.len()
            + 20
            + r#","scaled":"#.len()
            + 20
            + "}".len();
        HEAD + (max_emojis * ENTRY).saturating_sub(1) + OTHER
    }
}

/// The longest emoji of Unicode's RGI list, in UTF-8: a kiss or couple with two skin tones
/// (`👩🏻‍❤️‍💋‍👨🏼`). JSON writes it as is, without escapes.
pub const MAX_RGI_EMOJI_BYTES: usize = 35;

/// Just enough of any frame to route it: which stream and which epoch.
#[derive(Debug, Clone, Deserialize)]
pub struct FrameHead {
    pub stream: String,
    pub epoch: u64,
}

/// The seeds' body for `POST /register` (and `/unregister`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Register {
    pub user_id: String,
    #[serde(default)]
    pub group_id: Option<String>,
    /// The stream the viewer is about to watch: its token (when viewer tokens are on) is good
    /// for this stream only. Absent: `main`, the seeds' one stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
}

/// Where a viewer should connect: the live subscriber with the most room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub cluster: String,
    /// `ws://host:port` of the subscriber; viewers append `/v1/streams/{stream}/ws`.
    pub subscriber: String,
    pub subscriber_name: String,
}

/// A live subscriber as its cluster publisher reports it upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub url: String,
    pub viewers: u64,
    /// Viewers it can still take (`max_viewers - viewers`); absent from a subscriber that does
    /// not report it, which placement treats as unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<u64>,
    /// Streams it can still start carrying (`max_streams` less those its viewers watch);
    /// absent from a subscriber that does not report it, which placement treats as unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_room: Option<u64>,
    /// While `stream_room` is 0: the [`stream_tag`]s of the streams it carries, sorted, so that
    /// placement still sends it viewers of those (they cost it no stream). Empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub carrying: Vec<u32>,
}

/// A stream's name as a number every process of every build computes alike (FNV-1a): what a
/// full subscriber lists of the streams it carries, a short number a stream rather than the name. Two
/// names may share a tag (about one in 2 million among a full subscriber's 2,048 streams): a
/// viewer of the other is then placed there and refused at its upgrade, and registers again.
pub fn stream_tag(stream: &str) -> u32 {
    const OFFSET_BASIS: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    stream
        .bytes()
        .fold(OFFSET_BASIS, |h, b| (h ^ u32::from(b)).wrapping_mul(PRIME))
}

/// What a lower tier tells the tier above over their link (the frames flow the other way).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LinkUp {
    /// A subscriber's heartbeat to its cluster publisher.
    Subscriber {
        name: String,
        url: String,
        viewers: u64,
        /// As [`Member::room`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<u64>,
        /// As [`Member::stream_room`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stream_room: Option<u64>,
        /// As [`Member::carrying`].
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        carrying: Vec<u32>,
    },
    /// A cluster publisher's heartbeat to the main publisher, listing its live subscribers.
    Cluster {
        name: String,
        subscribers: Vec<Member>,
    },
}

/// What a lower tier asks of the tier above, sent up its link: first when the link opens, then
/// whenever a subscriber's set of streams changes, as the change alone (a subscriber's viewers
/// choose stream names, so a full list per change would grow with the square of the names).
///
/// `have` says, per stream, the newest epoch the lower tier already holds, so that the tier above
/// resends only the epochs after it: a reconnect after a blip costs the blip, not the ring.
///
/// Every field has a default, and serde does not check a struct's `type` tag when reading one, so
/// a reader tells a subscription from a heartbeat by its tag (serialized first) before parsing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename = "subscribe")]
pub struct Subscribe {
    /// Every stream, now and later (a cluster publisher: few of them, and their subscribers'
    /// streams are then served from their own ring at once). `add` and `remove` are unused then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    /// Streams to start receiving: each one's epochs after `have`, its newest trend frames, then
    /// a [`Synced`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<String>,
    /// Streams to stop receiving.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// The newest epoch held of a stream being added (or, with `all`, of any stream); a stream
    /// not named here gets its whole ring.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub have: std::collections::BTreeMap<String, u64>,
}

/// Sent down a link once the ring of a newly subscribed stream has been sent: the lower tier now
/// holds every epoch the upper tier had for that stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "synced")]
pub struct Synced {
    pub stream: String,
}

/// What `/register` and `/v1/viewers` answer: the [`Assignment`], plus a signed viewer token when
/// viewer auth is on (pass it as `?token=` or `Authorization: Bearer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    #[serde(flatten)]
    pub assignment: Assignment,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// When the token expires, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires_s: Option<u64>,
}

/// Sent down a link before what a lower tier lacks of a stream, when the tier above no longer
/// holds all of it: epochs after `since` (the newest the lower tier had) and before `oldest` are
/// lost. The lower tier keeps the hole, tells its own joiners from before it, and passes this on
/// as it is to its lower tiers and to the stream's live viewers (for whom it reads as the
/// [`ViewerNotice::Gap`] with the stream named).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "gap")]
pub struct StreamGap {
    pub stream: String,
    pub since: u64,
    pub oldest: u64,
}

/// What a subscriber tells a viewer besides frames: a WebSocket text message, or over SSE an
/// event named by its `type` (`event: lagged`) with this JSON as its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ViewerNotice {
    /// Just before the next frame: `missed` frames were skipped because the viewer read too
    /// slowly. Fetch them with `since`.
    Lagged { missed: u64 },
    /// Before the replay of a join with `since`: the ring no longer holds every epoch after
    /// `since`. Epochs after `since` and before `oldest` (the oldest the subscriber still has,
    /// the first of the replay) are lost to this viewer.
    Gap { since: u64, oldest: Option<u64> },
    /// SSE only (a WebSocket gets a Close frame with the same code and reason): the subscriber
    /// ends the stream. `code` is a WebSocket close code with the same meaning.
    Closing { code: u16, reason: String },
}

/// One live cluster publisher in `GET /v1/topology`, with its live subscribers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyCluster {
    pub name: String,
    /// Viewers over all its subscribers.
    pub viewers: u64,
    pub subscribers: Vec<Member>,
}

/// `GET /v1/topology` on the main publisher: the live tiers below it and their viewer counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyView {
    /// Viewers over every live subscriber.
    pub viewers: u64,
    pub clusters: Vec<TopologyCluster>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_frame_has_the_documented_shape() {
        let frame = EpochFrame {
            kind: FrameType::Epoch,
            stream: "main".into(),
            epoch: 881234567,
            start_ms: 1762469134000,
            end_ms: 1762469136000,
            total: 4123,
            late: 0,
            emojis: vec![EmojiCount {
                emoji: "🔥".into(),
                count: 3785,
                scaled: 3,
            }],
            other: None,
        };
        assert_eq!(
            serde_json::to_string(&frame).unwrap(),
            r#"{"type":"epoch","stream":"main","epoch":881234567,"start_ms":1762469134000,"end_ms":1762469136000,"total":4123,"late":0,"emojis":[{"emoji":"🔥","count":3785,"scaled":3}]}"#
        );
        let bounded = EpochFrame {
            total: 4123,
            other: Some(OtherEmojis {
                distinct: 2,
                count: 338,
                scaled: 2,
            }),
            ..frame
        };
        let text = serde_json::to_string(&bounded).unwrap();
        assert_eq!(
            text,
            r#"{"type":"epoch","stream":"main","epoch":881234567,"start_ms":1762469134000,"end_ms":1762469136000,"total":4123,"late":0,"emojis":[{"emoji":"🔥","count":3785,"scaled":3}],"other":{"distinct":2,"count":338,"scaled":2}}"#
        );
        assert_eq!(serde_json::from_str::<EpochFrame>(&text).unwrap(), bounded);
    }

    /// The bound is reached, not just respected: a frame at its widest everywhere is exactly
    /// `max_bytes` long.
    #[test]
    fn max_bytes_is_the_widest_frame() {
        let longest = "👩🏻\u{200d}❤\u{fe0f}\u{200d}💋\u{200d}👨🏼";
        assert_eq!(longest.len(), MAX_RGI_EMOJI_BYTES);
        for n in [0, 1, 2, 64] {
            let widest = EpochFrame {
                kind: FrameType::Epoch,
                stream: "s".repeat(64),
                epoch: u64::MAX,
                start_ms: u64::MAX,
                end_ms: u64::MAX,
                total: u64::MAX,
                late: u64::MAX,
                emojis: vec![
                    EmojiCount {
                        emoji: longest.into(),
                        count: u64::MAX,
                        scaled: u64::MAX,
                    };
                    n
                ],
                other: Some(OtherEmojis {
                    distinct: u64::MAX,
                    count: u64::MAX,
                    scaled: u64::MAX,
                }),
            };
            let text = serde_json::to_string(&widest).unwrap();
            assert_eq!(text.len(), EpochFrame::max_bytes(n), "{n} emojis");
        }
        assert_eq!(EpochFrame::max_bytes(64), 7_200);
    }

    #[test]
    fn viewer_notices_have_the_documented_shapes() {
        let cases = [
            (
                ViewerNotice::Lagged { missed: 3 },
                r#"{"type":"lagged","missed":3}"#,
            ),
            (
                ViewerNotice::Gap {
                    since: 10,
                    oldest: Some(40),
                },
                r#"{"type":"gap","since":10,"oldest":40}"#,
            ),
            (
                ViewerNotice::Closing {
                    code: 1012,
                    reason: "upstream lost".into(),
                },
                r#"{"type":"closing","code":1012,"reason":"upstream lost"}"#,
            ),
        ];
        for (notice, text) in cases {
            assert_eq!(serde_json::to_string(&notice).unwrap(), text);
        }
    }

    #[test]
    fn subscriptions_carry_only_what_changed_and_what_is_held() {
        let delta = Subscribe {
            add: vec!["a".into()],
            have: [("a".to_string(), 7)].into(),
            ..Subscribe::default()
        };
        assert_eq!(
            serde_json::to_string(&delta).unwrap(),
            r#"{"type":"subscribe","add":["a"],"have":{"a":7}}"#
        );
        let all: Subscribe = serde_json::from_str(r#"{"type":"subscribe","all":true}"#).unwrap();
        assert!(all.all && all.add.is_empty() && all.have.is_empty());
        // serde does not check a struct's tag: a reader tells messages apart by it first.
        let beat = r#"{"type":"subscriber","name":"s","url":"ws://x","viewers":0}"#;
        assert!(serde_json::from_str::<Subscribe>(beat).is_ok());
    }

    #[test]
    fn event_lines_borrow_from_the_record() {
        let line = r#"{"stream":"main","user_id":"u1","emoji":"👨‍👩‍👧","ts":"2024-11-05T10:00:00Z","recv_ms":1}"#;
        let ev: EmojiEvent = serde_json::from_str(line).unwrap();
        assert!(matches!(ev.emoji, std::borrow::Cow::Borrowed(_)));
        assert_eq!(ev.emoji, "👨‍👩‍👧");
        assert_eq!(ev.ts, Some(ClientTs::Iso("2024-11-05T10:00:00Z".into())));
    }

    #[test]
    fn client_ts_accepts_millis_and_text() {
        let a: SendEmoji =
            serde_json::from_str(r#"{"user_id":"u","emoji_type":"🔥","timestamp":1730800000000}"#)
                .unwrap();
        assert_eq!(a.timestamp, Some(ClientTs::Millis(1730800000000)));
        let seed: SendEmoji =
            serde_json::from_str(r#"{"user_id":42,"emoji_type":"❤️","timestamp":1764540000}"#)
                .unwrap();
        assert_eq!(seed.user_id, SeedUserId::Integer(42));
        let b: SendEmoji = serde_json::from_str(r#"{"user_id":"u","emoji_type":"🔥"}"#).unwrap();
        assert_eq!(b.timestamp, None);
    }
}
