//! The server's memory budget as one connection sees it (docs/operations.md, "Memory and
//! descriptor budgets"): the bytes its frame decoder holds are charged to the server-wide
//! receive share, and the deadlines of its reads (admission, a frame in progress, idleness).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::Shared;
use crate::protocol::{DecoderConfig, ErrorResponse, FrameDecoder, code};

/// Read buffer of a connection that has not handshaken (or authenticated, with auth on).
const UNADMITTED_READ_BUFFER_BYTES: u32 = 4 << 10;
/// Read buffer of an admitted connection (the decoder's default).
const ADMITTED_READ_BUFFER_BYTES: u32 = 64 << 10;
/// How often a connection waiting for room in the receive budget looks again.
const BUDGET_POLL: Duration = Duration::from_millis(5);

/// The decoder limits of a connection before (`admitted = false`) and after admission.
pub(super) fn decoder_config(cfg: &crate::ServerConfig, admitted: bool) -> DecoderConfig {
    if admitted {
        DecoderConfig {
            frame_bytes_max: cfg.frame_bytes_max,
            read_buffer_bytes: ADMITTED_READ_BUFFER_BYTES.min(cfg.frame_bytes_max),
        }
    } else {
        DecoderConfig {
            frame_bytes_max: cfg.unadmitted_frame_bytes_max.min(cfg.frame_bytes_max),
            read_buffer_bytes: UNADMITTED_READ_BUFFER_BYTES,
        }
    }
}

/// The bytes one connection's decoder has allocated, charged to `Shared::receive_bytes`;
/// returned when dropped.
pub(super) struct ReceiveCharge {
    shared: Arc<Shared>,
    charged: usize,
}

impl ReceiveCharge {
    pub(super) fn new(shared: Arc<Shared>) -> ReceiveCharge {
        ReceiveCharge { shared, charged: 0 }
    }

    /// Brings the charge in line with what the decoder holds now.
    pub(super) fn update(&mut self, decoder: &FrameDecoder) {
        let now = decoder.allocated_bytes();
        if now > self.charged {
            let more = now - self.charged;
            self.shared.receive_bytes.fetch_add(more, Ordering::AcqRel);
        } else if now < self.charged {
            let less = self.charged - now;
            self.shared.receive_bytes.fetch_sub(less, Ordering::AcqRel);
        }
        self.charged = now;
    }

    /// Before reading more of a frame in progress: waits while the server's receive share is
    /// spent (the server slows: this socket is not read), until the frame's deadline. `false`
    /// if the deadline passed first (the caller refuses the connection with a clear error).
    pub(super) async fn wait_for_room(&self, timer: &ReadTimer) -> bool {
        let max = self.shared.cfg.receive_bytes_max();
        while self.shared.receive_bytes.load(Ordering::Acquire) > max {
            if timer.frame_deadline().is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            shardline_engine::rt::sleep(BUDGET_POLL).await;
        }
        true
    }
}

impl Drop for ReceiveCharge {
    fn drop(&mut self) {
        self.shared
            .receive_bytes
            .fetch_sub(self.charged, Ordering::AcqRel);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deadline {
    Admission,
    Frame,
    Idle,
}

/// The deadlines of a connection's reads: admission (from accept, until handshaken and
/// authenticated), the frame in progress (from its first byte) and idleness (a quiet read).
pub(super) struct ReadTimer {
    admission: Option<Instant>,
    frame_started: Option<Instant>,
    frame_timeout: Duration,
    idle: Duration,
    /// The deadline the last wait was cut to.
    nearest: Deadline,
}

impl ReadTimer {
    pub(super) fn new(cfg: &crate::ServerConfig) -> ReadTimer {
        ReadTimer {
            admission: Some(Instant::now() + Duration::from_millis(cfg.unadmitted_timeout_ms)),
            frame_started: None,
            frame_timeout: Duration::from_millis(cfg.frame_receive_timeout_ms.max(1)),
            idle: Duration::from_millis(cfg.idle_timeout_ms.max(1)),
            nearest: Deadline::Idle,
        }
    }

    pub(super) fn admitted(&mut self) {
        self.admission = None;
    }

    /// After frames were taken out: `partial` whether bytes of a next frame are buffered,
    /// `completed` whether a frame was completed since the last call.
    pub(super) fn frame_progress(&mut self, partial: bool, completed: bool) {
        if !partial {
            self.frame_started = None;
        } else if completed || self.frame_started.is_none() {
            self.frame_started = Some(Instant::now());
        }
    }

    fn frame_deadline(&self) -> Option<Instant> {
        self.frame_started.map(|t| t + self.frame_timeout)
    }

    /// How long the next read may wait, or `None` if a deadline has passed.
    pub(super) fn next_wait(&mut self, quiet: bool, partial: bool) -> Option<Duration> {
        let now = Instant::now();
        let mut wait = Duration::MAX;
        let mut nearest = Deadline::Idle;
        let mut consider = |at: Option<Instant>, kind: Deadline| {
            if let Some(at) = at {
                let left = at.saturating_duration_since(now);
                if left < wait {
                    wait = left;
                    nearest = kind;
                }
            }
        };
        consider(self.admission, Deadline::Admission);
        consider(
            if partial { self.frame_deadline() } else { None },
            Deadline::Frame,
        );
        consider(quiet.then_some(now + self.idle), Deadline::Idle);
        self.nearest = nearest;
        if wait.is_zero() {
            return None;
        }
        // No deadline applies (busy and admitted): wake once per idle period anyway.
        Some(if wait == Duration::MAX {
            self.idle
        } else {
            wait
        })
    }

    /// Whether the last wait ended on a deadline (rather than on the busy wake-up).
    pub(super) fn ended_on_deadline(&self, quiet: bool, partial: bool) -> bool {
        match self.nearest {
            Deadline::Admission => self.admission.is_some(),
            Deadline::Frame => partial,
            Deadline::Idle => quiet,
        }
    }

    /// The error a connection is closed with when its nearest deadline passed.
    pub(super) fn expired_error(&self) -> ErrorResponse {
        match self.nearest {
            Deadline::Admission => ErrorResponse::new(
                code::PROTOCOL_VIOLATION,
                "handshake (and authentication) not completed in time",
            ),
            Deadline::Frame => {
                ErrorResponse::new(code::PROTOCOL_VIOLATION, "frame not completed in time")
            }
            Deadline::Idle => ErrorResponse::new(code::PROTOCOL_VIOLATION, "idle timeout"),
        }
    }
}

/// A subscription's reservation in the read-ahead share: the engine holds at most two
/// responses of `read_bytes` for it. Returned when dropped.
pub(super) struct ReadAheadCharge {
    shared: Arc<Shared>,
    read_bytes: usize,
}

impl ReadAheadCharge {
    /// Responses read ahead per subscription (the engine's `subscribe` depth).
    const DEPTH: usize = 2;

    /// Reserves two responses of `want` bytes, or of `min` bytes when the share has no room
    /// for `want`; `None` when not even that fits.
    pub(super) fn reserve(shared: &Arc<Shared>, want: usize, min: usize) -> Option<Self> {
        let max = shared.cfg.readahead_bytes_max();
        // Full-size read-ahead only while half the share is free: the rest serves many
        // subscriptions at the smallest size rather than a few large ones.
        for (read_bytes, limit) in [(want, max / 2), (min.min(want), max)] {
            let need = read_bytes * Self::DEPTH;
            let got =
                shared
                    .readahead_bytes
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                        (held + need <= limit).then_some(held + need)
                    });
            if got.is_ok() {
                return Some(ReadAheadCharge {
                    shared: shared.clone(),
                    read_bytes,
                });
            }
        }
        None
    }

    /// Bytes of one read-ahead response.
    pub(super) fn read_bytes(&self) -> usize {
        self.read_bytes
    }
}

impl Drop for ReadAheadCharge {
    fn drop(&mut self) {
        self.shared
            .readahead_bytes
            .fetch_sub(self.read_bytes * Self::DEPTH, Ordering::AcqRel);
    }
}
