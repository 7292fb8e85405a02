import ThorTensor
import ThorExperts
import ThorModel

/// Finding the first NaN or ±infinity in named tensors, to name it in an error.
public enum NonFinite {
    /// Index of the first non-finite element of `t`, if any.
    public static func firstIndex(in t: Tensor) -> Int? {
        let p = t.pointer
        for i in 0..<t.count where !p[i].isFinite { return i }
        return nil
    }

    /// "name[i] = nan" for the first tensor (in the given order) holding a non-finite value.
    public static func first(in tensors: [(String, Tensor)]) -> String? {
        for (name, t) in tensors {
            if let i = firstIndex(in: t) { return "\(name)[\(i)] = \(t.pointer[i])" }
        }
        return nil
    }
}
