//! Process-wide allocator settings for tensor workloads on the CPU.
//!
//! candle allocates a fresh buffer for every op result. With glibc's defaults, buffers above the
//! dynamic mmap threshold are `mmap`ed and unmapped again when dropped, and freed heap tops are
//! trimmed back to the OS, so each step of training pays page faults and zero-filling of the
//! same memory over and over (perf on the tiny loop model: ~23% of a step in `exc_page_fault`).
//! Raising both thresholds keeps the memory in the process for reuse. Measured on the tiny
//! model's training step (batch 32, 1 thread): `llm+fc` 526-650 -> 336-369 ms, `full` 670-950 ->
//! 440-495 ms (docs/PERFORMANCE.md).
//!
//! Call [`tune_malloc`] once at the start of a program (the `mde` CLI and the bench examples
//! do). It is a no-op outside Linux/glibc, and when `MDE_MALLOC_DEFAULTS` is set (to measure
//! the difference).

/// Largest mmap threshold glibc accepts on 64-bit targets (`DEFAULT_MMAP_THRESHOLD_MAX`).
pub const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory kept at the top of the heap before trimming.
pub const TRIM_THRESHOLD: i32 = 1 << 30;

/// Raises glibc's mmap and trim thresholds (see the module docs). Returns whether both settings
/// were accepted; `false` on other platforms.
pub fn tune_malloc() -> bool {
    if std::env::var_os("MDE_MALLOC_DEFAULTS").is_some() {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
        unsafe {
            let a = libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            let b = libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            a == 1 && b == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_settings() {
        if std::env::var_os("MDE_MALLOC_DEFAULTS").is_none() {
            assert!(super::tune_malloc());
        }
    }
}
