import ThorWire

/// When the coordinator may send an unanswered request again (Lazy Pirate, told by the worker's
/// beats; docs/reliability.md, "Resending only what was lost").
///
/// A ZeroMQ connection loses no message while it holds, so a resend helps only when a message was
/// lost: a dropped connection (then the worker registers again and everything it owed is resent at
/// once) or a fault injector's drop. The clock runs from the last evidence about the request:
/// - sent: `base` plus the time its bytes, and those sent before it to the same worker in the
///   exchange, need on the link (one connection delivers in order: a Step sent behind a 50 MB
///   ApplyGradients reaches the worker only after it);
/// - a beat saying the worker is serving it (received, queued or computing): restarts with `base`
///   (a worker busy with a request for minutes is never asked again while it beats);
/// - a beat saying the worker answered it with a reply of B bytes: from the last of the above
///   (the reply left within a beat interval of it), `base` plus the time B bytes need on the link
///   (a 151 MB reply still arriving is not asked for again; a small lost one is, as before).
/// A worker that stops beating is judged by liveness, as before; the clock never extends that.
struct ResendClock {
    private(set) var since: Double
    private(set) var bytes: Int
    private(set) var answered = false

    init(sentAt: Double, bytes: Int) { since = sentAt; self.bytes = bytes }

    /// A beat (arrived at `t`) reported `p` for this request.
    mutating func observe(_ p: RequestProgress, at t: Double) {
        if p.answered {
            answered = true
            bytes = Int(clamping: p.replyBytes)
        } else if !answered {
            since = max(since, t)
            bytes = 0
        }
    }

    /// Whether the request is overdue at `now`: `base` seconds plus its bytes' time on the link.
    func due(now: Double, base: Double, estimator: DeadlineEstimator) -> Bool {
        now - since > base + estimator.transferAllowance(bytes: bytes)
    }
}
