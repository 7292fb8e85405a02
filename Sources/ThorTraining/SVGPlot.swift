import Foundation

/// Small hand-written SVG charts for experiment reports: grouped bars and lines, one
/// `<g class="series" data-series="NAME">` element per series (a legend entry each), so a
/// reader (or a test) finds every series by name. No dependencies; the output is plain XML.
public enum SVGPlot {
    /// One named series: a value per category (nil: no value there, nothing drawn).
    public struct Series: Sendable {
        public var name: String
        public var values: [Double?]
        public init(name: String, values: [Double?]) { self.name = name; self.values = values }
    }

    static let palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                          "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]

    /// Escapes text for XML content and attribute values.
    public static func escape(_ s: String) -> String {
        var out = ""
        for c in s {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            default: out.append(c)
            }
        }
        return out
    }

    /// Geometry shared by both charts.
    struct Frame {
        let width = 720.0, height = 360.0
        let left = 60.0, right = 200.0, top = 40.0, bottom = 50.0
        var plotWidth: Double { width - left - right }
        var plotHeight: Double { height - top - bottom }
        let yMin: Double, yMax: Double
        func y(_ v: Double) -> Double { top + plotHeight * (1 - (v - yMin) / max(yMax - yMin, 1e-12)) }
    }

    /// A "nice" upper bound for an axis that starts at `low`.
    static func axisRange(_ values: [Double], floorAtZero: Bool) -> (Double, Double) {
        let hi = values.max() ?? 1, lo = values.min() ?? 0
        let low = floorAtZero ? 0 : max(0, (lo - 0.1 * max(hi - lo, 0.5)).rounded(.down))
        var high = hi + 0.08 * max(hi - low, 1e-3)
        let step = pow(10, (log10(max(high - low, 1e-9))).rounded(.down)) / 2
        high = (high / step).rounded(.up) * step
        return (low, max(high, low + step))
    }

    static func header(_ f: Frame, title: String, yLabel: String) -> String {
        var s = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        s += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(f.width))\" height=\"\(Int(f.height))\" "
        s += "viewBox=\"0 0 \(Int(f.width)) \(Int(f.height))\" font-family=\"sans-serif\" font-size=\"12\">\n"
        s += "<title>\(escape(title))</title>\n"
        s += "<rect x=\"0\" y=\"0\" width=\"\(Int(f.width))\" height=\"\(Int(f.height))\" fill=\"white\"/>\n"
        s += "<text x=\"\(fmt(f.width / 2 - f.right / 2 + f.left / 2))\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">\(escape(title))</text>\n"
        // y axis with 5 ticks and grid lines
        s += "<g class=\"axis\">\n"
        for i in 0...4 {
            let v = f.yMin + (f.yMax - f.yMin) * Double(i) / 4
            let y = f.y(v)
            s += "<line x1=\"\(fmt(f.left))\" y1=\"\(fmt(y))\" x2=\"\(fmt(f.left + f.plotWidth))\" y2=\"\(fmt(y))\" stroke=\"#dddddd\"/>\n"
            s += "<text x=\"\(fmt(f.left - 6))\" y=\"\(fmt(y + 4))\" text-anchor=\"end\">\(tick(v))</text>\n"
        }
        s += "<line x1=\"\(fmt(f.left))\" y1=\"\(fmt(f.top))\" x2=\"\(fmt(f.left))\" y2=\"\(fmt(f.top + f.plotHeight))\" stroke=\"black\"/>\n"
        s += "<line x1=\"\(fmt(f.left))\" y1=\"\(fmt(f.top + f.plotHeight))\" x2=\"\(fmt(f.left + f.plotWidth))\" y2=\"\(fmt(f.top + f.plotHeight))\" stroke=\"black\"/>\n"
        s += "<text transform=\"translate(16 \(fmt(f.top + f.plotHeight / 2))) rotate(-90)\" text-anchor=\"middle\">\(escape(yLabel))</text>\n"
        s += "</g>\n"
        return s
    }

    static func categoryLabels(_ f: Frame, _ categories: [String]) -> String {
        let slot = f.plotWidth / Double(max(categories.count, 1))
        var s = "<g class=\"categories\">\n"
        // Labels wider than their slot are drawn slanted (ending under their slot's centre).
        let slanted = Double(categories.map(\.count).max() ?? 0) * 6.5 > slot
        for (i, c) in categories.enumerated() {
            let x = f.left + slot * (Double(i) + 0.5), y = f.top + f.plotHeight + (slanted ? 12 : 18)
            if slanted {
                s += "<text x=\"\(fmt(x))\" y=\"\(fmt(y))\" text-anchor=\"end\" font-size=\"10\" transform=\"rotate(-25 \(fmt(x)) \(fmt(y)))\">\(escape(c))</text>\n"
            } else {
                s += "<text x=\"\(fmt(x))\" y=\"\(fmt(y))\" text-anchor=\"middle\">\(escape(c))</text>\n"
            }
        }
        return s + "</g>\n"
    }

    static func legendEntry(_ f: Frame, index: Int, name: String, color: String) -> String {
        let y = f.top + 8 + Double(index) * 18
        let x = f.left + f.plotWidth + 16
        return "<rect x=\"\(fmt(x))\" y=\"\(fmt(y - 9))\" width=\"12\" height=\"12\" fill=\"\(color)\"/>"
            + "<text x=\"\(fmt(x + 18))\" y=\"\(fmt(y + 2))\">\(escape(name))</text>\n"
    }

    /// Grouped bars: one group per category, one bar per series in each group.
    public static func groupedBars(title: String, yLabel: String, categories: [String], series: [Series]) -> String {
        let all = series.flatMap { $0.values.compactMap { $0 } }
        let (lo, hi) = axisRange(all, floorAtZero: true)
        let f = Frame(yMin: lo, yMax: hi)
        var s = header(f, title: title, yLabel: yLabel) + categoryLabels(f, categories)
        let slot = f.plotWidth / Double(max(categories.count, 1))
        let barWidth = slot * 0.8 / Double(max(series.count, 1))
        for (k, ser) in series.enumerated() {
            let color = palette[k % palette.count]
            s += "<g class=\"series\" data-series=\"\(escape(ser.name))\" fill=\"\(color)\">\n"
            for (i, v) in ser.values.enumerated() where i < categories.count {
                guard let v else { continue }
                let x = f.left + slot * Double(i) + slot * 0.1 + barWidth * Double(k)
                let y = f.y(v), base = f.y(lo)
                s += "<rect x=\"\(fmt(x))\" y=\"\(fmt(y))\" width=\"\(fmt(barWidth))\" height=\"\(fmt(max(0, base - y)))\">"
                s += "<title>\(escape(ser.name)), \(escape(categories[i])): \(String(format: "%.2f", v))</title></rect>\n"
            }
            s += legendEntry(f, index: k, name: ser.name, color: color)
            s += "</g>\n"
        }
        return s + "</svg>\n"
    }

    /// Lines with markers: x = the categories in order, one polyline per series.
    public static func lines(title: String, yLabel: String, categories: [String], series: [Series]) -> String {
        let all = series.flatMap { $0.values.compactMap { $0 } }
        let (lo, hi) = axisRange(all.isEmpty ? [0, 1] : all, floorAtZero: false)
        let f = Frame(yMin: lo, yMax: hi)
        var s = header(f, title: title, yLabel: yLabel) + categoryLabels(f, categories)
        let slot = f.plotWidth / Double(max(categories.count, 1))
        for (k, ser) in series.enumerated() {
            let color = palette[k % palette.count]
            s += "<g class=\"series\" data-series=\"\(escape(ser.name))\" stroke=\"\(color)\" fill=\"\(color)\">\n"
            let points = ser.values.enumerated().compactMap { i, v -> (Double, Double, Double)? in
                guard let v, i < categories.count else { return nil }
                return (f.left + slot * (Double(i) + 0.5), f.y(v), v)
            }
            if points.count > 1 {
                s += "<polyline fill=\"none\" stroke-width=\"2\" points=\"\(points.map { "\(fmt($0.0)),\(fmt($0.1))" }.joined(separator: " "))\"/>\n"
            }
            for p in points {
                s += "<circle cx=\"\(fmt(p.0))\" cy=\"\(fmt(p.1))\" r=\"4\"><title>\(escape(ser.name)): \(String(format: "%.3f", p.2))</title></circle>\n"
            }
            s += legendEntry(f, index: k, name: points.isEmpty ? ser.name + " (no values)" : ser.name, color: color)
            s += "</g>\n"
        }
        return s + "</svg>\n"
    }

    static func fmt(_ v: Double) -> String { String(format: "%.1f", v) }
    static func tick(_ v: Double) -> String {
        abs(v - v.rounded()) < 1e-9 ? String(format: "%.0f", v) : String(format: "%.2f", v)
    }
}
