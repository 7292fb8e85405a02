import ThorTensor
import ThorWire

extension ExpertWorker {
    /// Refuses an assignment whose experts must be computed with OpenBLAS kernels this
    /// process did not load (different kernel sets give different bits, and OpenBLAS
    /// picks its set once, when it loads). The refusal (an `INTERNAL` Error reply, also
    /// written to stderr) says why and how to start the worker instead. Empty: no requirement.
    func requireBLASCore(_ requested: String) throws {
        guard !requested.isEmpty,
              let reason = BLASCore.refusal(requested: requested, loaded: BLASCore.loaded, cpuFlags: BLASCore.cpuFlags())
        else { return }
        let message = "worker \(options.workerID) refuses the assignment: \(reason)"
        writeStandardError("thor worker \(options.workerID): \(message)")
        throw WorkerRequestError(code: .internal, message: message)
    }
}
