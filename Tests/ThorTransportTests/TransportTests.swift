import XCTest
import ThorTransport

final class TransportTests: XCTestCase {
    func testRouterDealerMultipartAndPollTimeout() throws {
        let context = try ZMQContext()
        let router = try Socket(context: context, type: .router)
        try router.setRouterMandatory(true)
        try router.bind("tcp://127.0.0.1:*")
        let endpoint = try router.lastEndpoint()
        XCTAssertTrue(endpoint.hasPrefix("tcp://127.0.0.1:"), endpoint)
        let dealer = try Socket(context: context, type: .dealer)
        try dealer.setRoutingID("peer-1")
        try dealer.connect(endpoint)

        XCTAssertNil(try router.receive(timeout: 0.01), "nothing sent yet")
        try dealer.send([Frame("hello"), Frame([0, 1, 2])])
        let got = try XCTUnwrap(router.receive(timeout: 5))
        XCTAssertEqual(got.map(\.count), [6, 5, 3])
        XCTAssertEqual(got[0].string, "peer-1")
        XCTAssertEqual(got[2].array, [0, 1, 2])

        // Zero-copy send of a malloc'd buffer.
        let buffer = malloc(4)!
        buffer.storeBytes(of: 0xDEADBEEF as UInt32, as: UInt32.self)
        try router.send([Frame("peer-1"), Frame(adoptingMalloced: buffer, count: 4)])
        let reply = try XCTUnwrap(dealer.receive(timeout: 5))
        XCTAssertEqual(reply.count, 1)
        XCTAssertEqual(reply[0].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }, 0xDEADBEEF)

        // Sending to an unknown peer is an error naming the cause.
        XCTAssertThrowsError(try router.send([Frame("nobody"), Frame("x")])) { e in
            XCTAssertEqual((e as? ZMQError)?.code, EHOSTUNREACH)
        }
        dealer.close()
        XCTAssertThrowsError(try dealer.send([Frame("x")])) { XCTAssertTrue("\($0)".contains("closed"), "\($0)") }
    }

    func testMonitorReportsConnection() throws {
        let context = try ZMQContext()
        let router = try Socket(context: context, type: .router)
        try router.bind("tcp://127.0.0.1:*")
        let dealer = try Socket(context: context, type: .dealer)
        let monitor = try dealer.monitor(events: [.handshakeSucceeded, .disconnected])
        try dealer.connect(try router.lastEndpoint())
        let event = try XCTUnwrap(monitor.receiveEvent(timeout: 5))
        XCTAssertTrue(event.kind.contains(.handshakeSucceeded), "\(event)")
        router.close()
        let gone = try XCTUnwrap(monitor.receiveEvent(timeout: 5))
        XCTAssertTrue(gone.kind.contains(.disconnected), "\(gone)")
    }
}
