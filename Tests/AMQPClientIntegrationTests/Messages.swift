import AMQPClient

/// Text bodies, so a test reads what it published.
extension Delivery {
    var text: String { String(decoding: self.body, as: UTF8.self) }
}

func message(_ text: String, id: String? = nil) -> OutgoingMessage {
    OutgoingMessage(body: Array(text.utf8), contentType: "text/plain", messageID: id)
}
