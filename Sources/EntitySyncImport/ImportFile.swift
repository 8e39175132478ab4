import EntitySyncCore
import Foundation

/// Reads import files. Only the shape is checked here; the producer validates the content.
public enum ImportFile {
    public static func parse(_ text: String, format: ImportFormat) -> [ImportRow] {
        switch format {
        case .jsonl: return self.parseJSONLines(text)
        case .csv: return self.parseCSV(text)
        }
    }

    static func parseJSONLines(_ text: String) -> [ImportRow] {
        var rows: [ImportRow] = []
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let trimmed = line.trimmingCharacters(in: .whitespacesAndNewlines)
            guard !trimmed.isEmpty, !trimmed.hasPrefix("#") else { continue }
            let record: Result<ImportRecord, ImportRowError>
            do {
                guard let object = try JSONSerialization.jsonObject(with: Data(trimmed.utf8)) as? [String: Any] else {
                    throw ImportRowError("not a JSON object")
                }
                record = .success(try self.record(from: Fields(object: object)))
            } catch let error as ImportRowError {
                record = .failure(error)
            } catch {
                record = .failure(ImportRowError("not valid JSON (\(Self.reason(error)))"))
            }
            rows.append(ImportRow(line: index + 1, record: record))
        }
        return rows
    }

    static func parseCSV(_ text: String) -> [ImportRow] {
        let records = CSVReader.records(text)
        guard let header = records.first else { return [] }
        let columns = header.fields.map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
        let known: Set<String> = ["type", "id", "name", "email", "status", "description", "members"]
        if let unknown = columns.first(where: { !known.contains($0) && !$0.hasPrefix("attr.") }) {
            return [ImportRow(line: header.line, record: .failure(ImportRowError(
                "unknown column '\(unknown)' in the header; columns are \(known.sorted().joined(separator: ", ")) and attr.<key>")))]
        }
        guard columns.contains("type"), columns.contains("id") else {
            return [ImportRow(line: header.line, record: .failure(ImportRowError(
                "the header must name at least the columns type and id (got: \(columns.joined(separator: ",")))")))]
        }
        return records.dropFirst().compactMap { row in
            if row.fields.allSatisfy({ $0.isEmpty }) { return nil }
            guard row.fields.count == columns.count else {
                return ImportRow(line: row.line, record: .failure(ImportRowError(
                    "has \(row.fields.count) fields, the header has \(columns.count)")))
            }
            var object: [String: Any] = [:]
            var attributes: [String: String] = [:]
            for (column, value) in zip(columns, row.fields) {
                if column.hasPrefix("attr.") {
                    if !value.isEmpty { attributes[String(column.dropFirst(5))] = value }
                } else if column == "members" {
                    object[column] = value.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) }
                        .filter { !$0.isEmpty }
                } else {
                    object[column] = value
                }
            }
            if !attributes.isEmpty { object["attributes"] = attributes }
            do {
                return ImportRow(line: row.line, record: .success(try self.record(from: Fields(object: object))))
            } catch let error as ImportRowError {
                return ImportRow(line: row.line, record: .failure(error))
            } catch {
                return ImportRow(line: row.line, record: .failure(ImportRowError("\(error)")))
            }
        }
    }

    private static func record(from fields: Fields) throws -> ImportRecord {
        switch try fields.string("type", required: true).lowercased() {
        case "user":
            var user = User()
            user.id = try fields.string("id", required: true)
            user.name = try fields.string("name")
            user.email = try fields.string("email")
            switch try fields.string("status").lowercased() {
            case "", "active": user.status = .active
            case "disabled": user.status = .disabled
            case let other: throw ImportRowError("status must be active or disabled, not '\(other)'")
            }
            user.attributes = try fields.dictionary("attributes")
            return .user(user)
        case "group":
            var group = Group()
            group.id = try fields.string("id", required: true)
            group.name = try fields.string("name")
            group.description_p = try fields.string("description")
            group.memberIds = try fields.strings("members")
            return .group(group)
        case let other:
            throw ImportRowError("type must be user or group, not '\(other)'")
        }
    }

    private static func reason(_ error: any Error) -> String {
        (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? "\(error)"
    }

    /// Typed access to a row's fields with errors that name the field.
    private struct Fields {
        let object: [String: Any]

        func string(_ key: String, required: Bool = false) throws -> String {
            switch self.object[key] {
            case nil, is NSNull:
                if required { throw ImportRowError("missing \(key)") }
                return ""
            case let value as String:
                if required && value.trimmingCharacters(in: .whitespaces).isEmpty { throw ImportRowError("empty \(key)") }
                return value
            default:
                throw ImportRowError("\(key) must be a string")
            }
        }

        func strings(_ key: String) throws -> [String] {
            switch self.object[key] {
            case nil, is NSNull: return []
            case let values as [String]: return values
            case let values as [Any]:
                return try values.map { value in
                    guard let text = value as? String else { throw ImportRowError("\(key) must be a list of strings") }
                    return text
                }
            default: throw ImportRowError("\(key) must be a list of strings")
            }
        }

        func dictionary(_ key: String) throws -> [String: String] {
            switch self.object[key] {
            case nil, is NSNull: return [:]
            case let values as [String: String]: return values
            case let values as [String: Any]:
                return try values.mapValues { value in
                    guard let text = value as? String else { throw ImportRowError("\(key) values must be strings") }
                    return text
                }
            default: throw ImportRowError("\(key) must be an object of strings")
            }
        }
    }
}
