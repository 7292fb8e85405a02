import CSQLite
import Foundation

/// An error from the system SQLite library, with the database path and SQLite's message.
public struct SQLiteError: Error, CustomStringConvertible, Equatable {
    public var path: String
    public var reason: String
    public var description: String { "\(path): \(reason)" }
}

/// A connection to an SQLite database file through the system's libsqlite3 (module
/// `CSQLite`). Only what the corpus builder needs: run a query, read rows; `create`
/// opens for writing (tests build small databases with it).
public final class SQLiteDatabase {
    /// A column value.
    public enum Value: Equatable, Sendable {
        case integer(Int64)
        case real(Double)
        case text(String)
        case blob([UInt8])
        case null

        /// The text of a text column (nil otherwise).
        public var text: String? { if case .text(let s) = self { return s } else { return nil } }
        /// The integer of an integer column (nil otherwise).
        public var integer: Int64? { if case .integer(let i) = self { return i } else { return nil } }
    }

    public let path: String
    private var handle: OpaquePointer?

    /// Opens `path` read-only, or read-write creating the file when `create` is true.
    /// - Throws: ``SQLiteError`` when the file is missing (without `create`) or not a database.
    public init(path: String, create: Bool = false) throws {
        self.path = path
        guard create || FileManager.default.fileExists(atPath: path) else {
            throw SQLiteError(path: path, reason: "no such file")
        }
        var db: OpaquePointer?
        let flags = create ? (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) : SQLITE_OPEN_READONLY
        let rc = sqlite3_open_v2(path, &db, flags, nil)
        guard rc == SQLITE_OK, let db else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? "cannot open"
            sqlite3_close(db)
            throw SQLiteError(path: path, reason: message)
        }
        handle = db
    }

    deinit { sqlite3_close(handle) }

    /// Runs `sql` with text/integer `bindings` for `?` placeholders and calls `row` with
    /// each result row's values, in the order SQLite returns them.
    public func query(_ sql: String, _ bindings: [Value] = [], row: ([Value]) throws -> Void) throws {
        var statement: OpaquePointer?
        guard sqlite3_prepare_v2(handle, sql, -1, &statement, nil) == SQLITE_OK, let statement else {
            throw SQLiteError(path: path, reason: "\(lastMessage) in: \(sql)")
        }
        defer { sqlite3_finalize(statement) }
        let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)
        for (i, value) in bindings.enumerated() {
            let index = Int32(i + 1)
            switch value {
            case .integer(let v): sqlite3_bind_int64(statement, index, v)
            case .real(let v): sqlite3_bind_double(statement, index, v)
            case .text(let v): sqlite3_bind_text(statement, index, v, -1, transient)
            case .blob(let v): _ = v.withUnsafeBytes { sqlite3_bind_blob(statement, index, $0.baseAddress, Int32(v.count), transient) }
            case .null: sqlite3_bind_null(statement, index)
            }
        }
        let columns = Int(sqlite3_column_count(statement))
        while true {
            let rc = sqlite3_step(statement)
            if rc == SQLITE_DONE { break }
            guard rc == SQLITE_ROW else { throw SQLiteError(path: path, reason: "\(lastMessage) in: \(sql)") }
            var values: [Value] = []
            values.reserveCapacity(columns)
            for c in 0..<Int32(columns) {
                switch sqlite3_column_type(statement, c) {
                case SQLITE_INTEGER: values.append(.integer(sqlite3_column_int64(statement, c)))
                case SQLITE_FLOAT: values.append(.real(sqlite3_column_double(statement, c)))
                case SQLITE_TEXT:
                    let n = Int(sqlite3_column_bytes(statement, c))
                    if let p = sqlite3_column_text(statement, c) {
                        values.append(.text(String(decoding: UnsafeBufferPointer(start: p, count: n), as: UTF8.self)))
                    } else {
                        values.append(.text(""))
                    }
                case SQLITE_BLOB:
                    let n = Int(sqlite3_column_bytes(statement, c))
                    if let p = sqlite3_column_blob(statement, c) {
                        values.append(.blob(Array(UnsafeRawBufferPointer(start: p, count: n))))
                    } else {
                        values.append(.blob([]))
                    }
                default: values.append(.null)
                }
            }
            try row(values)
        }
    }

    /// Runs statements that return no rows (`CREATE`, `INSERT`, ...), separated by `;`.
    public func execute(_ sql: String) throws {
        var message: UnsafeMutablePointer<CChar>?
        if sqlite3_exec(handle, sql, nil, nil, &message) != SQLITE_OK {
            let text = message.map { String(cString: $0) } ?? lastMessage
            sqlite3_free(message)
            throw SQLiteError(path: path, reason: text)
        }
    }

    private var lastMessage: String { String(cString: sqlite3_errmsg(handle)) }
}
