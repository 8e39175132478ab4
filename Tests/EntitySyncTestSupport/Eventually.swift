/// Waits until `condition` holds, checking every 50 ms, or throws after `timeout`. Polling,
/// because what the tests wait for (a broker's queue, another process, a file) sends no signal.
public func eventually(_ what: String, timeout: Duration = .seconds(30), _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(50))
    }
    throw HarnessError("timed out after \(timeout) waiting for: \(what)")
}
