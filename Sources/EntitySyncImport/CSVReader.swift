/// RFC 4180 records: fields separated by commas, optionally quoted with `"` (a quoted field may
/// hold commas, newlines and `""` for a quote); lines end with LF or CRLF.
enum CSVReader {
    struct Record: Equatable {
        /// 1-based line where the record starts.
        var line: Int
        var fields: [String]
    }

    static func records(_ text: String) -> [Record] {
        var records: [Record] = []
        var fields: [String] = []
        var field = ""
        var quoted = false
        var line = 1
        var recordLine = 1
        var characters = text.makeIterator()
        var pending: Character?
        func next() -> Character? {
            if let character = pending { pending = nil; return character }
            return characters.next()
        }
        func endRecord() {
            fields.append(field)
            field = ""
            records.append(Record(line: recordLine, fields: fields))
            fields = []
        }
        while let character = next() {
            if quoted {
                if character == "\"" {
                    if let following = next() {
                        if following == "\"" { field.append("\"") } else { quoted = false; pending = following }
                    } else {
                        quoted = false
                    }
                } else {
                    if character == "\n" || character == "\r\n" { line += 1 }
                    field.append(character)
                }
                continue
            }
            switch character {
            case "\"" where field.isEmpty: quoted = true
            case ",": fields.append(field); field = ""
            case "\n", "\r\n":
                endRecord()
                line += 1
                recordLine = line
            default: field.append(character)
            }
        }
        if !field.isEmpty || !fields.isEmpty { endRecord() }
        return records
    }
}
