/// A worker's second connection to the coordinator, which carries only its liveness beats.
///
/// A ZeroMQ connection delivers messages in order and each message whole, so a beat sent on
/// the connection that carries the worker's replies waits behind a reply still in flight:
/// a 150 MB export, or the step's gradients, takes longer than the 0.75 s liveness window on a
/// busy machine, and the coordinator used to declare a worker lost whose I/O thread had beaten
/// on time all along (both workers at once when both sent large replies; measured in
/// docs/reliability.md, "Beats that wait behind replies"). On their own connection beats are
/// never queued behind data: the coordinator's libzmq I/O thread reads both connections'
/// sockets in turn, and its ROUTER delivers a complete beat while a large reply is still arriving.
///
/// The beat connection is a DEALER whose routing id is the worker's data routing id
/// (`WORKER_ID#INCARNATION`) followed by `suffix`; the coordinator counts a Heartbeat (request
/// id 0) arriving on it as a sign of life of that worker and ignores anything else on it.
/// A data routing id ends in hex digits, so it never ends in the suffix. Workers also beat on
/// the data connection, as before, so a coordinator without beat channels still hears them.
public enum BeatChannel {
    public static let suffix = "+beat"

    /// The routing id of the beat connection of the worker whose data routing id is `dataRoute`.
    public static func route(forDataRoute dataRoute: String) -> String { dataRoute + suffix }

    /// The data routing id of a beat connection's `route` (nil: `route` is not a beat connection).
    public static func dataRoute(of route: String) -> String? {
        route.hasSuffix(suffix) ? String(route.dropLast(suffix.count)) : nil
    }
}
