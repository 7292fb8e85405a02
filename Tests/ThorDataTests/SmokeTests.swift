import XCTest
import ThorData
