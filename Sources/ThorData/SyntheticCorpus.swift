import ThorTensor
/// A built-in multi-domain parallel corpus of invented languages, generated
/// deterministically from a seed (same configuration → same pairs, bit for bit).
///
/// The source language has a shared vocabulary of common words, words specific to
/// each domain, and *ambiguous* words whose translation depends on the domain,
/// so a model (and task-guided routing) must infer the domain from the sentence to
/// translate them. Grammar: word-by-word translation, except that a source
/// `noun adjective` pair becomes `adjective noun` in the target (a local
/// reordering); both sides end with `.`. Sentences have `minLength...maxLength`
/// source words. A fraction of sentences mix in domain words of a second domain
/// (always a strict minority); they carry the majority domain's label, and
/// ambiguous words translate by that label. Training domain sizes are imbalanced
/// (`domainShares`) so that temperature sampling matters; dev and test have
/// the same number of pairs per domain.
public struct SyntheticCorpus: Sendable {
    /// What to generate.
    public struct Configuration: Sendable, Equatable {
        /// Seed of the vocabulary and of every sentence.
        public var seed: UInt64 = 1
        /// Domain (task) names.
        public var domains: [String] = ["it", "law", "medical", "religion"]
        /// Share of the training pairs per domain (normalized; same count as `domains`).
        public var domainShares: [Double] = [0.5, 0.25, 0.15, 0.1]
        /// Number of training pairs over all domains.
        public var trainSize: Int = 20_000
        /// Dev pairs per domain.
        public var devSizePerDomain: Int = 100
        /// Test pairs per domain.
        public var testSizePerDomain: Int = 100
        /// Shortest and longest source sentence in words (without the final period).
        public var minLength: Int = 4
        public var maxLength: Int = 12
        /// Common nouns, adjectives and verbs (each), shared by all domains.
        public var commonWordsPerClass: Int = 20
        /// Domain-specific nouns, adjectives and verbs (each), per domain.
        public var domainWordsPerClass: Int = 12
        /// Ambiguous nouns and verbs (each): one source word, one translation per domain.
        public var ambiguousWordsPerClass: Int = 6
        /// Fraction of sentences that mix in a second domain's words.
        public var mixedFraction: Double = 0.1

        public init() {}

        /// Checks the configuration; the error names the field.
        public func validate() throws {
            func fail(_ s: String) -> CorpusFileError { CorpusFileError(path: "synthetic corpus", line: 0, reason: s) }
            guard !domains.isEmpty, Set(domains).count == domains.count else { throw fail("domains must be non-empty and distinct") }
            guard domains.allSatisfy({ !$0.isEmpty && !$0.contains("\t") && !$0.contains(" ") }) else {
                throw fail("domain names must be non-empty without tabs or spaces")
            }
            guard domainShares.count == domains.count, domainShares.allSatisfy({ $0 > 0 }) else {
                throw fail("domainShares needs one positive share per domain")
            }
            guard trainSize >= 0, devSizePerDomain >= 0, testSizePerDomain >= 0 else { throw fail("sizes must be >= 0") }
            guard minLength >= 2, maxLength >= minLength, maxLength <= 200 else { throw fail("need 2 <= minLength <= maxLength <= 200") }
            guard commonWordsPerClass >= 1, domainWordsPerClass >= 1, ambiguousWordsPerClass >= 1 else {
                throw fail("word counts per class must be >= 1")
            }
            guard (0...1).contains(mixedFraction) else { throw fail("mixedFraction must be in [0, 1]") }
        }
    }

    /// Part of speech of an invented word.
    public enum WordClass: Int, Sendable { case determiner, noun, adjective, verb }

    /// One source word and its translation per domain (the same for all domains unless ambiguous).
    public struct Entry: Sendable, Equatable {
        public var source: String
        public var wordClass: WordClass
        /// Translation per domain index.
        public var translations: [String]
        /// The domain index for domain-specific words, nil for common and ambiguous words.
        public var domain: Int?
        /// True for words whose translation depends on the domain.
        public var isAmbiguous: Bool = false
    }

    public let configuration: Configuration
    /// The lexicon: every source word with its translations.
    public let lexicon: [Entry]
    public let train: [TranslationPair]
    public let dev: [TranslationPair]
    public let test: [TranslationPair]
    /// The task labels (the domains), in configuration order.
    public var tasks: [String] { configuration.domains }

    private let index: [String: Int]

    /// Generates the corpus. - Throws: a ``CorpusFileError`` for an invalid configuration.
    public init(configuration: Configuration = Configuration()) throws {
        try configuration.validate()
        self.configuration = configuration
        let lexicon = SyntheticCorpus.makeLexicon(configuration)
        self.lexicon = lexicon
        var index: [String: Int] = [:]
        for (i, e) in lexicon.enumerated() { index[e.source] = i }
        self.index = index
        let gen = Generator(configuration: configuration, lexicon: lexicon)
        // Training domain sizes from the shares (largest remainder, ties to lower index).
        let total = configuration.domainShares.reduce(0, +)
        let exact = configuration.domainShares.map { Double(configuration.trainSize) * $0 / total }
        var counts = exact.map { Int($0) }
        let remainders: [Double] = (0..<counts.count).map { exact[$0] - Double(counts[$0]) }
        let order = (0..<counts.count).sorted { a, b in
            remainders[a] != remainders[b] ? remainders[a] > remainders[b] : a < b
        }
        for k in 0..<(configuration.trainSize - counts.reduce(0, +)) { counts[order[k % order.count]] += 1 }
        var trainDomains: [Int] = []
        for (d, c) in counts.enumerated() { trainDomains += Array(repeating: d, count: c) }
        var rng = RandomGenerator(seed: configuration.seed, stream: [0xD0, 0])
        rng.shuffle(&trainDomains)
        train = trainDomains.enumerated().map { gen.pair(split: 0, number: $0.offset, domain: $0.element) }
        func balanced(split: UInt64, perDomain: Int) -> [TranslationPair] {
            var out: [TranslationPair] = []
            for d in 0..<configuration.domains.count {
                for i in 0..<perDomain { out.append(gen.pair(split: split, number: d * perDomain + i, domain: d)) }
            }
            return out
        }
        dev = balanced(split: 1, perDomain: configuration.devSizePerDomain)
        test = balanced(split: 2, perDomain: configuration.testSizePerDomain)
    }

    /// The reference translation of a source sentence in a domain (nil if a word is unknown).
    public func translate(_ source: String, domain: String) -> String? {
        guard let d = configuration.domains.firstIndex(of: domain) else { return nil }
        var words = source.split(separator: " ").map(String.init)
        guard words.last == "." else { return nil }
        words.removeLast()
        var entries: [Entry] = []
        for w in words {
            guard let i = index[w] else { return nil }
            entries.append(lexicon[i])
        }
        return Generator.render(entries, domain: d).target
    }

    // MARK: - Generation

    private struct Generator {
        let configuration: Configuration
        let determiners: [Entry]
        let common: [WordClass: [Entry]]
        let specific: [[WordClass: [Entry]]]
        let ambiguous: [WordClass: [Entry]]

        init(configuration: Configuration, lexicon: [Entry]) {
            self.configuration = configuration
            determiners = lexicon.filter { $0.wordClass == .determiner }
            var common: [WordClass: [Entry]] = [:], ambiguous: [WordClass: [Entry]] = [:]
            var specific = Array(repeating: [WordClass: [Entry]](), count: configuration.domains.count)
            for e in lexicon where e.wordClass != .determiner {
                if let d = e.domain { specific[d][e.wordClass, default: []].append(e) }
                else if e.isAmbiguous { ambiguous[e.wordClass, default: []].append(e) }
                else { common[e.wordClass, default: []].append(e) }
            }
            self.common = common; self.specific = specific; self.ambiguous = ambiguous
        }

        enum Slot { case determiner, word(WordClass) }

        func pair(split: UInt64, number: Int, domain: Int) -> TranslationPair {
            var rng = RandomGenerator(seed: configuration.seed, stream: [0x5E, split, UInt64(number)])
            let length = configuration.minLength + rng.nextInt(below: configuration.maxLength - configuration.minLength + 1)
            // Slots: NP = det noun (adj), VP = verb; NP VP NP VP ... truncated to `length`.
            var slots: [Slot] = []
            var np = true
            while slots.count < length {
                if np {
                    slots.append(.determiner); slots.append(.word(.noun))
                    if rng.nextInt(below: 2) == 0 { slots.append(.word(.adjective)) }
                } else {
                    slots.append(.word(.verb))
                }
                np.toggle()
            }
            slots = Array(slots.prefix(length))
            // Source of each content word: 0 common, 1 domain-specific, 2 ambiguous.
            var kinds: [Int] = []
            var specificSlots: [Int] = []
            for (i, s) in slots.enumerated() {
                guard case let .word(c) = s else { kinds.append(0); continue }
                let r = rng.nextDouble()
                let kind = r < 0.4 ? 1 : (r < 0.65 && c != .adjective ? 2 : 0)
                kinds.append(kind)
                if kind == 1 { specificSlots.append(i) }
            }
            var domainOf = Array(repeating: domain, count: slots.count)
            let domains = configuration.domains.count
            if domains > 1, rng.nextDouble() < configuration.mixedFraction, specificSlots.count >= 3 {
                let other = (domain + 1 + rng.nextInt(below: domains - 1)) % domains
                var chosen = specificSlots
                rng.shuffle(&chosen)
                for i in chosen.prefix((specificSlots.count - 1) / 2) { domainOf[i] = other }
            }
            var entries: [Entry] = []
            for (i, s) in slots.enumerated() {
                switch s {
                case .determiner:
                    entries.append(determiners[rng.nextInt(below: determiners.count)])
                case let .word(c):
                    let pool: [Entry]
                    switch kinds[i] {
                    case 1: pool = specific[domainOf[i]][c]!
                    case 2: pool = ambiguous[c]!
                    default: pool = common[c]!
                    }
                    entries.append(pool[rng.nextInt(below: pool.count)])
                }
            }
            let (source, target) = Generator.render(entries, domain: domain)
            return TranslationPair(task: configuration.domains[domain], source: source, target: target)
        }

        /// Source and target text: word by word, `noun adj` → `adj noun`, final period.
        static func render(_ entries: [Entry], domain: Int) -> (source: String, target: String) {
            var target: [String] = []
            var i = 0
            while i < entries.count {
                if i + 1 < entries.count, entries[i].wordClass == .noun, entries[i + 1].wordClass == .adjective {
                    target.append(entries[i + 1].translations[domain]); target.append(entries[i].translations[domain])
                    i += 2
                } else {
                    target.append(entries[i].translations[domain]); i += 1
                }
            }
            let source = entries.map(\.source).joined(separator: " ") + " ."
            return (source, target.joined(separator: " ") + ".")
        }
    }

    private static func makeLexicon(_ c: Configuration) -> [Entry] {
        var rng = RandomGenerator(seed: c.seed, stream: [0x1E])
        var used = Set<String>()
        let srcOnset = ["b", "d", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z"]
        let srcVowel = ["a", "e", "i", "o", "u"]
        let tgtOnset = ["b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "w", "br", "st", "th", "sh", "ch", "fr"]
        let tgtVowel = ["a", "e", "i", "o", "u", "ea", "ou", "ai"]
        let tgtCoda = ["", "n", "r", "s", "t", "l", "nd", "ck", "ng"]
        func word(target: Bool, syllables: Int) -> String {
            while true {
                var w = ""
                for _ in 0..<syllables {
                    if target {
                        w += tgtOnset[rng.nextInt(below: tgtOnset.count)] + tgtVowel[rng.nextInt(below: tgtVowel.count)]
                    } else {
                        w += srcOnset[rng.nextInt(below: srcOnset.count)] + srcVowel[rng.nextInt(below: srcVowel.count)]
                    }
                }
                if target { w += tgtCoda[rng.nextInt(below: tgtCoda.count)] } else if rng.nextInt(below: 3) == 0 { w += "k" }
                let key = (target ? "t:" : "s:") + w
                if used.insert(key).inserted { return w }
            }
        }
        let domains = c.domains.count
        var lexicon: [Entry] = []
        for _ in 0..<8 {
            let t = word(target: true, syllables: 1)
            lexicon.append(Entry(source: word(target: false, syllables: 1), wordClass: .determiner,
                                 translations: Array(repeating: t, count: domains), domain: nil))
        }
        let classes: [WordClass] = [.noun, .adjective, .verb]
        for cls in classes {
            for _ in 0..<c.commonWordsPerClass {
                let t = word(target: true, syllables: 2)
                lexicon.append(Entry(source: word(target: false, syllables: 2), wordClass: cls,
                                     translations: Array(repeating: t, count: domains), domain: nil))
            }
        }
        for d in 0..<domains {
            for cls in classes {
                for _ in 0..<c.domainWordsPerClass {
                    let t = word(target: true, syllables: 2 + rng.nextInt(below: 2))
                    lexicon.append(Entry(source: word(target: false, syllables: 3), wordClass: cls,
                                         translations: Array(repeating: t, count: domains), domain: d))
                }
            }
        }
        for cls in [WordClass.noun, .verb] {
            for _ in 0..<c.ambiguousWordsPerClass {
                let s = word(target: false, syllables: 2)
                let ts = (0..<domains).map { _ in word(target: true, syllables: 2) }
                lexicon.append(Entry(source: s, wordClass: cls, translations: ts, domain: nil, isAmbiguous: true))
            }
        }
        return lexicon
    }
}
