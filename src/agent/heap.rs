//! Gives the heap's free pages back to the kernel after the bursts of allocation that starting
//! or changing the rules cause.
//!
//! glibc hands memory back to the kernel on its own only from the top of the heap. Start-up's
//! temporaries (the rules file's value tree, each watch's first list parsed whole, the first
//! requests' buffers) are freed between objects that live on, so their pages stay resident: at
//! 1,000 rules, 7 of the heap's 15.7 MB were free chunks (BENCHMARKS.md, finding 22).
//! `malloc_trim(0)` also releases the whole free pages inside the heap, and later allocations
//! reuse the rest. It walks the free lists once, a fraction of a millisecond; it runs once per
//! change of the rules, never per tick.

use std::time::Duration;

/// Long enough for every rule's first tick (within a second of its start, see `slots`) and the
/// watches' first lists to be done.
pub const SETTLE: Duration = Duration::from_secs(5);

/// Releases free heap pages once `delay` has passed, without holding up the caller.
pub fn release_after(delay: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        release_free_pages();
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_free_pages() {
    // SAFETY: `malloc_trim` takes no pointers and takes the allocator's locks itself; glibc
    // allows it at any time, from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators (musl's, macOS's) give memory back on their own terms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_pages() {}
