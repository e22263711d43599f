//! What refusing a large body costs: the slow path (every refusal names its field) must not
//! allocate per item before it finds the first bad one. Counted with a global allocator that
//! counts the allocations of the thread inside [`allocations`], so this binary holds this test
//! alone.

use emostream_gateway::parse::{batch_body, BodyFormat, Rules};
use emostream_gateway::GatewayError;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    /// Allocations made on this thread while counting; None when not counting.
    static COUNT: Cell<Option<usize>> = const { Cell::new(None) };
}

// SAFETY: every call is passed to the system allocator unchanged; counting touches only a
// const-initialized thread-local without a destructor, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = COUNT.try_with(|c| c.set(c.get().map(|n| n + 1)));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = COUNT.try_with(|c| c.set(c.get().map(|n| n + 1)));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// `f`'s result and the allocations it made on this thread.
fn allocations<T>(f: impl FnOnce() -> T) -> (T, usize) {
    COUNT.with(|c| c.set(Some(0)));
    let out = f();
    let n = COUNT.with(|c| c.replace(None)).expect("counting");
    (out, n)
}

/// 100,000 items that each lack `user_id`, as a JSON array and as NDJSON, with and without a
/// field each: refused naming the first, with a number of allocations that does not grow with
/// the items (the slow path used to build a `String` prefix and a `serde_json::Value` for every
/// item before validating the first).
#[test]
fn refusing_a_large_body_of_bad_items_allocates_a_bounded_amount() {
    const ITEMS: usize = 100_000;
    let rules = Rules::default();
    for (item, format) in [
        ("{}", BodyFormat::Json),
        (r#"{"emoji":"x"}"#, BodyFormat::Json),
        ("{}", BodyFormat::NdJson),
        (r#"{"emoji":"x"}"#, BodyFormat::NdJson),
    ] {
        let body = match format {
            BodyFormat::Json => format!("[{}]", vec![item; ITEMS].join(",")),
            BodyFormat::NdJson => vec![item; ITEMS].join("\n"),
        };
        let (refused, n) = allocations(|| batch_body(body.as_bytes(), format, &rules));
        assert_eq!(
            refused,
            Err(GatewayError::Invalid {
                reason: "user_id is required".into(),
                field: "items[0].user_id".into(),
            }),
            "{item} {format:?}"
        );
        assert!(n <= 64, "{n} allocations for {item} {format:?}");
    }
}
