import Foundation

/// A progress bar with rate on standard error, redrawn in place on a terminal at most ten
/// times a second; elsewhere a line every few seconds.
final class ImportProgress {
    private let total: Int
    private var done: Int
    private let start = Date()
    private var lastDraw = Date.distantPast
    private let tty = Terminal.errorIsTerminal

    init(total: Int, alreadyDone: Int) {
        self.total = total
        self.done = alreadyDone
    }

    var elapsed: Double { Date().timeIntervalSince(self.start) }

    func advance() {
        self.done += 1
        let now = Date()
        if now.timeIntervalSince(self.lastDraw) >= (self.tty ? 0.1 : 5) { self.draw(now) }
    }

    func finish() {
        self.draw(Date())
        if self.tty { Terminal.write("\n", to: .standardError) }
    }

    private func draw(_ now: Date) {
        self.lastDraw = now
        let fraction = self.total == 0 ? 1 : Double(self.done) / Double(self.total)
        let width = 30
        let filled = Int(fraction * Double(width))
        let rate = Double(self.done) / max(now.timeIntervalSince(self.start), 0.001)
        let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
        let text = "[\(bar)] \(self.done)/\(self.total) \(Int(fraction * 100))% \(Int(rate)) rows/s"
        Terminal.write(self.tty ? "\r\(text)" : "\(text)\n", to: .standardError)
    }
}
