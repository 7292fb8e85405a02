import ThorWire

extension ClusterCoordinator {
    /// What one receive got: nothing within the timeout, a frame handled here, or a reply.
    struct Received {
        var any: Bool
        var reply: (UInt64, String, WireMessage, Double)?
        /// When the reply's frames came out of the socket, and the worker's timings it carried.
        var arrivedAt = 0.0
        var timings: WorkerTimings? = nil
        /// The reply's bytes (all its frames).
        var bytes = 0
        /// A worker that answered a frame it could not decode (an Error naming no request).
        var refusedBy: String? = nil
        /// A worker whose frame this coordinator could not decode (damaged on the way).
        var undecodableFrom: String? = nil
        static let nothing = Received(any: false, reply: nil)
        static let handled = Received(any: true, reply: nil)
    }
}
