import XCTest
import Foundation
import ThorCluster
#if canImport(Glibc)
import Glibc
#endif

/// Ctrl-C, SIGTERM and SIGHUP are caught while a `TerminationSignals` catches them, and get
/// their previous action back afterwards: a process that goes on after a training run (the
/// paper sweep runs several) must not be left ignoring Ctrl-C.
final class TerminationSignalsTests: XCTestCase {
    /// The raw handler of `s` (0: the default action, 1: ignored, else a function).
    func handler(_ s: Int32) -> Int {
        var a = sigaction()
        sigaction(s, nil, &a)
        return unsafeBitCast(a.__sigaction_handler.sa_handler, to: Int.self)
    }

    func waitForSignal(_ t: TerminationSignals, within seconds: Double = 5) -> Int32? {
        let end = Date().addingTimeInterval(seconds)
        while t.received == nil && Date() < end { usleep(10_000) }
        return t.received
    }

    func testCatchesThenGivesTheSignalsTheirActionsBack() {
        let before = TerminationSignals.caughtSignals.map(handler)
        let first = TerminationSignals()
        for s in TerminationSignals.caughtSignals { XCTAssertNotEqual(handler(s), 0, "signal \(s) no longer has its default action") }
        kill(getpid(), SIGHUP)  // would end this test process if it were not caught
        XCTAssertEqual(waitForSignal(first), SIGHUP)
        first.restore()
        XCTAssertEqual(TerminationSignals.caughtSignals.map(handler), before, "the actions from before are back")
        XCTAssertEqual(first.received, SIGHUP, "what was caught stays")
        first.restore()  // twice is harmless
        XCTAssertEqual(TerminationSignals.caughtSignals.map(handler), before)

        // A second run in the same process catches again, from a clean slate.
        var second: TerminationSignals? = TerminationSignals()
        XCTAssertNil(second!.received)
        kill(getpid(), SIGTERM)
        XCTAssertEqual(waitForSignal(second!), SIGTERM)
        second = nil  // released without restore(): the end of the instance restores too
        XCTAssertEqual(TerminationSignals.caughtSignals.map(handler), before)
    }
}
