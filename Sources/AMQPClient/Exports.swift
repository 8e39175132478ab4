// The value types and the broker protocol live in AMQPModel so the sync core and the in-memory
// test broker can use them without librabbitmq; users of the client get them with it.
@_exported import AMQPModel
