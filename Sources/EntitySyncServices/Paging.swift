import Foundation
import EntitySyncCore
import EntitySyncProto
import GRPCCore

/// Page sizes and opaque page tokens (the last id of the previous page, base64url-encoded).
struct Page {
    static let defaultSize = 100
    static let maximumSize = 1000

    let size: Int
    let after: String?

    init(size requested: Int32, token: String) throws {
        guard requested >= 0, requested <= Int32(Self.maximumSize) else {
            throw RPCErrors.invalid("page_size must be between 1 and \(Self.maximumSize) (0 means \(Self.defaultSize)); got \(requested)")
        }
        self.size = requested == 0 ? Self.defaultSize : Int(requested)
        if token.isEmpty {
            self.after = nil
        } else {
            // A token encodes one id, so it is never longer than an id's base64.
            guard token.utf8.count <= (DraftValidation.maximumIDLength + 2) / 3 * 4 else {
                throw RPCErrors.invalid("page_token is not a token from a previous response; omit it to start from the first page")
            }
            var base64 = token.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
            while base64.count % 4 != 0 { base64 += "=" }
            guard let data = Data(base64Encoded: base64), let id = String(data: data, encoding: .utf8), !id.isEmpty else {
                throw RPCErrors.invalid("page_token is not a token from a previous response; omit it to start from the first page")
            }
            self.after = id
        }
    }

    /// Fetches `size + 1` to know whether another page follows; returns the page and its next token.
    func load<Item>(id: (Item) -> String, _ fetch: (_ after: String?, _ limit: Int) async throws -> [Item]) async throws
        -> (items: [Item], nextToken: String) {
        let items = try await fetch(self.after, self.size + 1)
        guard items.count > self.size, let last = items.prefix(self.size).last else { return (items, "") }
        let token = Data(id(last).utf8).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
        return (Array(items.prefix(self.size)), token)
    }
}

extension Page {
    /// One page of users, from `fetch(after, limit)`, as a list response.
    static func users(size: Int32, token: String,
                      _ fetch: (_ after: String?, _ limit: Int) async throws -> [User]) async throws -> Entitysync_V1_ListUsersResponse {
        let page = try Page(size: size, token: token)
        return try await RPCErrors.mapping {
            let (users, next) = try await page.load(id: \.id, fetch)
            var response = Entitysync_V1_ListUsersResponse()
            response.users = users
            response.nextPageToken = next
            return response
        }
    }

    /// One page of groups, from `fetch(after, limit)`, as a list response.
    static func groups(size: Int32, token: String,
                       _ fetch: (_ after: String?, _ limit: Int) async throws -> [Group]) async throws -> Entitysync_V1_ListGroupsResponse {
        let page = try Page(size: size, token: token)
        return try await RPCErrors.mapping {
            let (groups, next) = try await page.load(id: \.id, fetch)
            var response = Entitysync_V1_ListGroupsResponse()
            response.groups = groups
            response.nextPageToken = next
            return response
        }
    }
}
