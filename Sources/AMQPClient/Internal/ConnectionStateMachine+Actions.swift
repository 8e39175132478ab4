import Logging

extension ConnectionStateMachine {
    /// What the executor does next. The ones that call librabbitmq and whose outcome matters
    /// (`awaitsOutcome`) come last in a list; the executor reports their outcome as the next event.
    enum Action {
        /// Answer a caller. No I/O.
        case answer(Answer)
        case log(Logger.Level, Logger.Message, Logger.Metadata)
        /// Stop accepting commands, answer those still queued (with `refusal(of:with:)`) and let
        /// the thread exit.
        case shutDown

        // I/O whose failure changes nothing (the connection is going away or will notice by itself).
        case sendChannelCloseOk(UInt16)
        case sendConnectionCloseOk
        /// Free the library's connection handle (and its socket).
        case destroyConnection
        /// Send connection.close, then free the handle.
        case closeConnection
        /// Hand back a delivery nobody will handle any more (basic.reject with requeue).
        case requeue(channel: UInt16, tag: UInt64)

        // I/O whose outcome is the next event.
        /// Open the socket and log in; then `connected` or `connectFailed`.
        case connect(AMQPURL)
        /// A synchronous method round trip; then `rpcFinished`.
        case rpc(BrokerMethod)
        /// basic.publish on the publishing channel; `publishFailed` if it could not be sent.
        case publish(PublishRequest)
        /// basic.ack or basic.reject; on success answer `reply`, else `settleFailed`.
        case settle(Settlement, channel: UInt16, tag: UInt64, Reply<Void>)
        /// Hand a delivery to its consumer's stream; `deliveryRefused` if the stream has ended.
        case deliver(DeliveryContent, ChannelRef, DeliveryStream.Continuation)

        var awaitsOutcome: Bool {
            switch self {
            case .connect, .rpc, .publish, .settle, .deliver: return true
            case .answer, .log, .shutDown, .sendChannelCloseOk, .sendConnectionCloseOk, .destroyConnection,
                 .closeConnection, .requeue:
                return false
            }
        }
    }

    /// A reply to a caller, with its value. Giving it is the only thing done with a continuation.
    enum Answer {
        case void(Reply<Void>, Result<Void, AMQPError>)
        case queueStatus(Reply<QueueStatus>, Result<QueueStatus, AMQPError>)
        case count(Reply<Int>, Result<Int, AMQPError>)
        case status(Reply<ConnectionStatus>, ConnectionStatus)
        case publish(PublishRequest, Result<Void, AMQPError>)
        /// End a consumer's delivery stream.
        case finish(DeliveryStream.Continuation)

        func give() {
            switch self {
            case .void(let reply, let result): reply.resume(with: result.mapError { $0 as any Error })
            case .queueStatus(let reply, let result): reply.resume(with: result.mapError { $0 as any Error })
            case .count(let reply, let result): reply.resume(with: result.mapError { $0 as any Error })
            case .status(let reply, let status): reply.resume(returning: status)
            case .publish(let request, let result): request.complete(result)
            case .finish(let continuation): continuation.finish()
            }
        }
    }

    /// A delivery's message as read from the library, and the queue it came from.
    struct DeliveryContent: Sendable, Hashable {
        var body: [UInt8]
        var properties: AMQPProperties
        var exchange: String
        var routingKey: String
        var queue: String
        var redelivered: Bool
        var tag: UInt64
    }

    /// The synchronous methods this client sends, with the channel each goes on.
    enum BrokerMethod: Sendable, Hashable {
        case channelOpen(UInt16)
        case channelClose(UInt16)
        case confirmSelect
        case basicQos(channel: UInt16, prefetch: UInt16)
        case basicConsume(channel: UInt16, queue: String)
        case basicCancel(channel: UInt16, consumerTag: String)
        case exchangeDeclare(ExchangeSpec)
        case exchangeDelete(String)
        case queueDeclare(QueueSpec)
        case queueInspect(String)
        case queueBind(BindingSpec)
        case queueUnbind(BindingSpec)
        case queueDelete(String, ifEmpty: Bool)
        case queuePurge(String)

        var channel: UInt16 {
            switch self {
            case .channelOpen(let channel), .channelClose(let channel), .basicQos(let channel, _),
                 .basicConsume(let channel, _), .basicCancel(let channel, _):
                return channel
            case .confirmSelect:
                return ConnectionStateMachine.publishChannel
            case .exchangeDeclare, .exchangeDelete, .queueDeclare, .queueInspect, .queueBind, .queueUnbind,
                 .queueDelete, .queuePurge:
                return ConnectionStateMachine.controlChannel
            }
        }
    }

    /// What a method round trip returned.
    enum RPCResult: Sendable, Hashable {
        case done
        case queue(name: String, messageCount: Int, consumerCount: Int)
        case messageCount(Int)
        case consumerTag(String)

        func queueStatus(defaultName: String) -> QueueStatus {
            guard case .queue(let name, let messages, let consumers) = self else {
                return QueueStatus(name: defaultName, messageCount: 0, consumerCount: 0)
            }
            return QueueStatus(name: name.isEmpty ? defaultName : name, messageCount: messages, consumerCount: consumers)
        }

        var messageCount: Int {
            switch self {
            case .queue(_, let count, _), .messageCount(let count): return count
            case .done, .consumerTag: return 0
            }
        }
    }

    /// How a method round trip ended.
    enum RPCOutcome: Sendable, Hashable {
        case ok(RPCResult)
        /// The broker closed the method's channel instead of answering.
        case channelClosed(replyCode: UInt16, replyText: String)
        /// The broker closed the whole connection instead of answering.
        case connectionClosed(replyCode: UInt16, replyText: String)
        /// The library failed (socket error, timeout): the connection is unusable.
        case libraryFailure(String)
    }

    /// One method round trip of a job, and what to name in an error about it.
    struct Step {
        var method: BrokerMethod
        var operation: AMQPOperation
        /// A broker refusal is logged and the job goes on (re-declaring topology after a reconnect).
        var tolerant = false
    }

    /// Work of one or more method round trips, run one step at a time.
    struct Job {
        enum Kind {
            /// Set up a fresh connection: fixed channels, then the recorded topology.
            case establish(replaying: Bool)
            /// The first of `pendingOperations`.
            case operation
            case subscribe(consumer: Int)
            /// basic.cancel for a consumer cancelled by this process; then finish its stream and
            /// answer the cancel callers.
            case cancel(consumer: Int, continuation: DeliveryStream.Continuation, replies: [Reply<Void>])
            case closeChannel(UInt16)
            case openPublishChannel
        }

        var kind: Kind
        var steps: [Step]
        var next = 0
        /// Tolerated refusals so far.
        var failures = 0
        /// What the last successful step returned (an operation answers its caller with it).
        var lastResult: RPCResult?

        var current: Step? { self.next < self.steps.count ? self.steps[self.next] : nil }
    }
}
