import Foundation

/// The scaling report's charts: stacked bars (per-phase time per configuration) and a heat map
/// (expert load per worker and layer). Same conventions as `SVGPlot`: one
/// `<g class="series" data-series="NAME">` per series (heat map: per row), every drawn value
/// carries a `<title>` with its number, and the output is plain XML.
extension SVGPlot {
    /// Stacked bars: one bar per category, one segment per series stacked in series order.
    public static func stackedBars(title: String, yLabel: String, categories: [String], series: [Series]) -> String {
        let totals = categories.indices.map { i in series.reduce(0.0) { $0 + max(0, (i < $1.values.count ? $1.values[i] : nil) ?? 0) } }
        let (lo, hi) = axisRange(totals.isEmpty ? [1] : totals, floorAtZero: true)
        let f = Frame(yMin: lo, yMax: hi)
        var s = header(f, title: title, yLabel: yLabel) + categoryLabels(f, categories)
        let slot = f.plotWidth / Double(max(categories.count, 1))
        var base = [Double](repeating: 0, count: categories.count)
        for (k, ser) in series.enumerated() {
            let color = palette[k % palette.count]
            s += "<g class=\"series\" data-series=\"\(escape(ser.name))\" fill=\"\(color)\">\n"
            for (i, v) in ser.values.enumerated() where i < categories.count {
                guard let v, v > 0 else { continue }
                let yTop = f.y(base[i] + v), yBottom = f.y(base[i])
                s += "<rect x=\"\(fmt(f.left + slot * Double(i) + slot * 0.15))\" y=\"\(fmt(yTop))\" width=\"\(fmt(slot * 0.7))\" height=\"\(fmt(max(0, yBottom - yTop)))\">"
                s += "<title>\(escape(ser.name)), \(escape(categories[i])): \(String(format: "%.4g", v))</title></rect>\n"
                base[i] += v
            }
            s += legendEntry(f, index: k, name: ser.name, color: color)
            s += "</g>\n"
        }
        return s + "</svg>\n"
    }

    /// A heat map: one row per series (its name on the left), one cell per column; colour from
    /// white (0) to dark blue (the largest value); nil cells are grey and have no title.
    public static func heatMap(title: String, columns: [String], rows: [Series], valueLabel: String) -> String {
        let all = rows.flatMap { $0.values.compactMap { $0 } }
        let top = max(all.max() ?? 1, 1e-12)
        let cell = 28.0, left = 240.0, headerHeight = 70.0
        let width = left + cell * Double(max(columns.count, 1)) + 130, height = headerHeight + cell * Double(max(rows.count, 1)) + 30
        var s = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        s += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" "
        s += "viewBox=\"0 0 \(Int(width)) \(Int(height))\" font-family=\"sans-serif\" font-size=\"11\">\n"
        s += "<title>\(escape(title))</title>\n<rect x=\"0\" y=\"0\" width=\"\(Int(width))\" height=\"\(Int(height))\" fill=\"white\"/>\n"
        s += "<text x=\"\(fmt(width / 2))\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">\(escape(title))</text>\n"
        s += "<g class=\"columns\">\n"
        for (j, c) in columns.enumerated() {
            s += "<text x=\"\(fmt(left + cell * (Double(j) + 0.5)))\" y=\"\(fmt(headerHeight - 8))\" text-anchor=\"middle\">\(escape(c))</text>\n"
        }
        s += "</g>\n"
        for (i, row) in rows.enumerated() {
            let y = headerHeight + cell * Double(i)
            s += "<g class=\"series\" data-series=\"\(escape(row.name))\">\n"
            s += "<text x=\"\(fmt(left - 6))\" y=\"\(fmt(y + cell / 2 + 4))\" text-anchor=\"end\">\(escape(row.name))</text>\n"
            for j in columns.indices {
                let v = j < row.values.count ? row.values[j] : nil
                let x = left + cell * Double(j)
                if let v {
                    let t = max(0, min(1, v / top))
                    let color = String(format: "#%02x%02x%02x", Int(255 - 225 * t), Int(255 - 180 * t), Int(255 - 75 * t))
                    s += "<rect x=\"\(fmt(x))\" y=\"\(fmt(y))\" width=\"\(fmt(cell - 1))\" height=\"\(fmt(cell - 1))\" fill=\"\(color)\">"
                    s += "<title>\(escape(row.name)), \(escape(columns[j])): \(String(format: "%.4g", v))</title></rect>\n"
                } else {
                    s += "<rect x=\"\(fmt(x))\" y=\"\(fmt(y))\" width=\"\(fmt(cell - 1))\" height=\"\(fmt(cell - 1))\" fill=\"#eeeeee\"/>\n"
                }
            }
            s += "</g>\n"
        }
        // Colour scale.
        let sx = left + cell * Double(max(columns.count, 1)) + 20
        s += "<g class=\"scale\"><text x=\"\(fmt(sx))\" y=\"\(fmt(headerHeight - 8))\">\(escape(valueLabel))</text>\n"
        for k in 0...4 {
            let t = Double(k) / 4
            let color = String(format: "#%02x%02x%02x", Int(255 - 225 * t), Int(255 - 180 * t), Int(255 - 75 * t))
            s += "<rect x=\"\(fmt(sx))\" y=\"\(fmt(headerHeight + Double(k) * 18))\" width=\"14\" height=\"14\" fill=\"\(color)\" stroke=\"#999999\"/>"
            s += "<text x=\"\(fmt(sx + 20))\" y=\"\(fmt(headerHeight + Double(k) * 18 + 11))\">\(String(format: "%.3g", top * t))</text>\n"
        }
        return s + "</g>\n</svg>\n"
    }
}
