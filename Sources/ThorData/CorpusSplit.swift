import Crypto
import Foundation

/// Deduplication and the train/dev/test split of a built corpus, decided by a hash of
/// the lower-cased English so that no English string is in two splits.
///
/// The rule, exactly:
/// 1. exact duplicates `(task, source, target)` are dropped (the first is kept);
/// 2. each English string `e` (lower-cased) gets `u(e)`: the first 8 bytes of
///    SHA-256(UTF-8 of `e`), big-endian, as a fraction of 2^64;
/// 3. each task τ with `n_τ` distinct English strings would put `e` in test when
///    `u(e) < test_τ / n_τ`, in dev when below `(test_τ + dev_τ) / n_τ`, else in train
///    (`test_τ`, `dev_τ`: the wanted sizes);
/// 4. `e` goes to the most held-out split any task containing it would choose (test over
///    dev over train), in every task: so it never crosses splits;
/// 5. a task's test or dev set larger than wanted keeps its pairs of smallest `u` and
///    drops the rest (dropping, never moving, keeps rule 4).
/// Within a split, pairs are ordered by task (in the given order), then `u`, then source.
public enum CorpusSplit {
    public enum Name: String, CaseIterable, Sendable { case train, dev, test }

    /// Wanted held-out sizes of one task, in pairs.
    public struct Sizes: Sendable, Equatable {
        public var dev: Int
        public var test: Int
        public init(dev: Int, test: Int) { self.dev = dev; self.test = test }
    }

    /// The outcome: the three splits and what was dropped per task.
    public struct Result: Sendable {
        public var train: [TranslationPair] = []
        public var dev: [TranslationPair] = []
        public var test: [TranslationPair] = []
        /// Exact duplicates dropped, per task.
        public var duplicates: [String: Int] = [:]
        /// Pairs dropped because their task's dev or test set was full (rule 5), per task.
        public var overflow: [String: Int] = [:]

        public subscript(name: Name) -> [TranslationPair] {
            switch name { case .train: train; case .dev: dev; case .test: test }
        }
    }

    /// The hash position `u(e)` of an English string (before lower-casing).
    public static func position(ofEnglish english: String) -> UInt64 {
        let d = Array(SHA256.hash(data: Array(english.lowercased().utf8)))
        return d[0..<8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
    }

    /// Splits `pairs` (tasks in `tasks` order; a task missing from `sizes` gets no held-out
    /// pairs). `englishIsTarget`: the English side is the target (xx→en), else the source.
    public static func split(_ pairs: [TranslationPair], tasks: [String], sizes: [String: Sizes],
                             englishIsTarget: Bool = true) -> Result {
        var result = Result()
        var seen = Set<TranslationPair>()
        var unique: [(pair: TranslationPair, key: String, u: UInt64)] = []
        var positions: [String: UInt64] = [:]
        for p in pairs {
            guard seen.insert(p).inserted else { result.duplicates[p.task, default: 0] += 1; continue }
            let key = (englishIsTarget ? p.target : p.source).lowercased()
            let u: UInt64
            if let known = positions[key] { u = known } else {
                let d = Array(SHA256.hash(data: Array(key.utf8)))
                u = d[0..<8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                positions[key] = u
            }
            unique.append((p, key, u))
        }

        // Rule 3: per-task thresholds from the number of distinct English strings.
        var keysPerTask: [String: Set<String>] = [:]
        for x in unique { keysPerTask[x.pair.task, default: []].insert(x.key) }
        func threshold(_ wanted: Int, _ n: Int) -> UInt64 {
            guard n > 0, wanted > 0 else { return 0 }
            let f = Double(wanted) / Double(n)
            return f >= 1 ? UInt64.max : UInt64(f * 18_446_744_073_709_551_616.0)
        }
        var testBelow: [String: UInt64] = [:], devBelow: [String: UInt64] = [:]
        for (task, keys) in keysPerTask {
            let s = sizes[task] ?? Sizes(dev: 0, test: 0)
            testBelow[task] = threshold(s.test, keys.count)
            devBelow[task] = threshold(s.test + s.dev, keys.count)
        }
        // Rule 4: the most held-out choice over the tasks that contain the string.
        var level: [String: Name] = [:]
        for x in unique {
            let t = x.pair.task
            let choice: Name = x.u < testBelow[t]! ? .test : (x.u < devBelow[t]! ? .dev : .train)
            switch (level[x.key], choice) {
            case (nil, _), (.train?, .dev), (.train?, .test), (.dev?, .test): level[x.key] = choice
            default: break
            }
        }
        // Rule 5 and ordering.
        let order = Dictionary(uniqueKeysWithValues: tasks.enumerated().map { ($1, $0) })
        func sortKey(_ a: (pair: TranslationPair, key: String, u: UInt64), _ b: (pair: TranslationPair, key: String, u: UInt64)) -> Bool {
            let ta = order[a.pair.task] ?? Int.max, tb = order[b.pair.task] ?? Int.max
            if ta != tb { return ta < tb }
            if a.pair.task != b.pair.task { return a.pair.task < b.pair.task }
            if a.u != b.u { return a.u < b.u }
            if a.key != b.key { return a.key < b.key }
            if a.pair.source != b.pair.source { return a.pair.source.utf8.lexicographicallyPrecedes(b.pair.source.utf8) }
            return a.pair.target.utf8.lexicographicallyPrecedes(b.pair.target.utf8)
        }
        for name in Name.allCases {
            var chosen = unique.filter { level[$0.key] == name }
            chosen.sort(by: sortKey)
            var kept: [TranslationPair] = []
            var perTask: [String: Int] = [:]
            for x in chosen {
                let s = sizes[x.pair.task] ?? Sizes(dev: 0, test: 0)
                let cap = name == .test ? s.test : (name == .dev ? s.dev : Int.max)
                if perTask[x.pair.task, default: 0] >= cap { result.overflow[x.pair.task, default: 0] += 1; continue }
                perTask[x.pair.task, default: 0] += 1
                kept.append(x.pair)
            }
            switch name {
            case .train: result.train = kept
            case .dev: result.dev = kept
            case .test: result.test = kept
            }
        }
        return result
    }
}
