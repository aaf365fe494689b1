// Prompt cleaning (see text_clean.h).
#include "model/text_clean.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <locale>
#include <regex>
#include <string_view>
#include <utility>
#include <vector>

#include "model/atomic_file.h"
#include "model/error.h"

namespace ditto {

namespace {

struct TextEntity {
  const char* name;
  const char* value;  // UTF-8
};

#include "model/text_tables.inc"

// Code points of UTF-8 text; bytes that are not UTF-8 become U+FFFD, one each.
std::vector<uint32_t> decode_utf8(const std::string& s) {
  std::vector<uint32_t> out;
  for (size_t i = 0; i < s.size();) {
    uint32_t cp = 0;
    const size_t len = utf8_decode(s, i, &cp);
    out.push_back(len ? cp : 0xFFFD);
    i += len ? len : 1;
  }
  return out;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

const char* entity(std::string_view name) {
  const auto* begin = std::begin(kHtml5Entities);
  const auto* end = std::end(kHtml5Entities);
  const auto* it = std::lower_bound(begin, end, name, [](const TextEntity& e, std::string_view n) { return std::string_view(e.name) < n; });
  return it != end && std::string_view(it->name) == name ? it->value : nullptr;
}

bool is_space(uint32_t c) { return std::binary_search(std::begin(kWhitespace), std::end(kWhitespace), c); }

bool is_digit(uint32_t c) { return c >= '0' && c <= '9'; }
bool is_hex(uint32_t c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

// html.unescape's numeric reference: the invalid ones replaced, surrogates and beyond U+10FFFF as U+FFFD,
// the code points HTML forbids dropped.
void numeric_reference(std::string& out, uint64_t num) {
  for (const auto& [n, value] : kInvalidCharrefs)
    if (n == num) {
      out += value;
      return;
    }
  if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) {
    append_utf8(out, 0xFFFD);
    return;
  }
  if (std::binary_search(std::begin(kInvalidCodepoints), std::end(kInvalidCodepoints), static_cast<uint32_t>(num))) return;
  append_utf8(out, static_cast<uint32_t>(num));
}

}  // namespace

std::string html_unescape(const std::string& text) {
  if (text.find('&') == std::string::npos) return text;
  const std::vector<uint32_t> s = decode_utf8(text);
  std::string out;
  out.reserve(text.size());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    if (s[i] != '&') {
      append_utf8(out, s[i++]);
      continue;
    }
    // &#DIGITS;?  |  &#xHEX;?  |  &NAME;? with NAME 1-32 characters other than \t \n \f space < & # ;
    size_t j = i + 1;
    if (j < n && s[j] == '#') {
      const bool hex = j + 1 < n && (s[j + 1] == 'x' || s[j + 1] == 'X');
      size_t k = j + (hex ? 2 : 1);
      const size_t first = k;
      uint64_t num = 0;
      while (k < n && (hex ? is_hex(s[k]) : is_digit(s[k]))) {
        const uint32_t c = s[k];
        const uint64_t d = is_digit(c) ? c - '0' : (c | 0x20) - 'a' + 10;
        num = std::min<uint64_t>(num * (hex ? 16 : 10) + d, uint64_t{1} << 40);  // saturated: past U+10FFFF
        ++k;
      }
      if (k == first) {  // "&#" without digits: not a reference
        append_utf8(out, s[i++]);
        continue;
      }
      if (k < n && s[k] == ';') ++k;
      numeric_reference(out, num);
      i = k;
      continue;
    }
    size_t k = j;
    while (k < n && k - j < 32 && s[k] != '\t' && s[k] != '\n' && s[k] != '\f' && s[k] != ' ' && s[k] != '<' &&
           s[k] != '&' && s[k] != '#' && s[k] != ';')
      ++k;
    if (k == j) {
      append_utf8(out, s[i++]);
      continue;
    }
    const bool semicolon = k < n && s[k] == ';';
    const size_t end = semicolon ? k + 1 : k;  // the matched reference: s[j, end)
    std::string name;
    for (size_t p = j; p < end; ++p) append_utf8(name, s[p]);
    if (const char* v = entity(name)) {
      out += v;
      i = end;
      continue;
    }
    // The longest name that is a prefix (as the standard defines), the rest kept as text.
    bool found = false;
    for (size_t x = end - j - 1; x > 1; --x) {
      std::string prefix;
      for (size_t p = j; p < j + x; ++p) append_utf8(prefix, s[p]);
      if (const char* v = entity(prefix)) {
        out += v;
        for (size_t p = j + x; p < end; ++p) append_utf8(out, s[p]);
        found = true;
        break;
      }
    }
    if (!found) {
      out += '&';
      for (size_t p = j; p < end; ++p) append_utf8(out, s[p]);
    }
    i = end;
  }
  return out;
}

std::string whitespace_clean(const std::string& text) {
  const std::vector<uint32_t> s = decode_utf8(text);
  std::string out;
  bool pending_space = false;
  for (uint32_t c : s) {
    if (is_space(c)) {
      pending_space = !out.empty();  // leading whitespace dropped
      continue;
    }
    if (pending_space) out += ' ';
    pending_space = false;
    append_utf8(out, c);
  }
  return out;  // trailing whitespace never written
}

std::string wan_prompt_clean(const std::string& text) { return whitespace_clean(html_unescape(html_unescape(text))); }

namespace {

// Open-Sora's clean_caption through std::wregex (ECMAScript) over UTF-32 text, with Python's re
// semantics where they differ: \w and \b from the C.UTF-8 locale's Unicode letters and digits
// (Python's str.isalnum, up to a few marks and numerals), \s spelled out as Python's whitespace, \d
// ASCII (Python's also matches other scripts' digits).

const std::locale& utf8_locale() {
  static const std::locale loc = [] {
    try {
      return std::locale("C.UTF-8");
    } catch (const std::exception&) {
      fail("Open-Sora's caption cleaning needs the C.UTF-8 locale (glibc 2.35 or later has it built in)");
    }
  }();
  return loc;
}

std::wstring widen(const std::string& s) {
  std::wstring w;
  for (uint32_t c : decode_utf8(s)) w += static_cast<wchar_t>(c);
  return w;
}

std::string narrow(const std::wstring& w) {
  std::string out;
  for (wchar_t c : w) append_utf8(out, static_cast<uint32_t>(c));
  return out;
}

// Python's \s and \S as character-class bodies.
const std::wstring& py_space_class() {
  static const std::wstring s = [] {
    std::wstring body;
    for (uint32_t c : kWhitespace) {
      if (c == '\\' || c == ']' || c == '-' || c == '^') body += L'\\';
      body += static_cast<wchar_t>(c);
    }
    return body;
  }();
  return s;
}

// A pattern written with Python's escapes, made ECMAScript: \s and \S (outside classes, as all of
// clean_caption's are written here) spelled out as Python's whitespace.
std::wstring ecma(const std::wstring& p) {
  std::wstring out;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] == L'\\' && i + 1 < p.size() && (p[i + 1] == L's' || p[i + 1] == L'S')) {
      out += (p[i + 1] == L's' ? L"[" : L"[^") + py_space_class() + L"]";
      ++i;
      continue;
    }
    out += p[i];
  }
  return out;
}

class Sub {
 public:
  Sub(const std::wstring& pattern, std::wstring replacement) : replacement_(std::move(replacement)) {
    const std::wstring p = ecma(pattern);
    re_.imbue(utf8_locale());
    re_.assign(p, std::regex::ECMAScript);
  }
  std::wstring operator()(const std::wstring& text) const { return std::regex_replace(text, re_, replacement_); }
  std::ptrdiff_t count(const std::wstring& text) const {
    return std::distance(std::wsregex_iterator(text.begin(), text.end(), re_), std::wsregex_iterator());
  }

 private:
  std::wregex re_;
  std::wstring replacement_;
};

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// urllib.parse.unquote_plus: '+' is a space, %XX a byte; the bytes read as UTF-8 (not UTF-8: U+FFFD).
std::string unquote_plus(const std::string& s) {
  std::string bytes;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') bytes += ' ';
    else if (s[i] == '%' && i + 2 < s.size() && hex_value(s[i + 1]) >= 0 && hex_value(s[i + 2]) >= 0) {
      bytes += static_cast<char>(hex_value(s[i + 1]) * 16 + hex_value(s[i + 2]));
      i += 2;
    } else {
      bytes += s[i];
    }
  }
  std::string out;
  for (uint32_t c : decode_utf8(bytes)) append_utf8(out, c);
  return out;
}

std::wstring py_strip(const std::wstring& s) {
  size_t b = 0, e = s.size();
  while (b < e && is_space(static_cast<uint32_t>(s[b]))) ++b;
  while (e > b && is_space(static_cast<uint32_t>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

// str.lower(): the locale's per-character mapping, with Python's two departures from it that matter:
// U+0130 (I with a dot) becomes "i" + U+0307, and a capital sigma ending a word becomes final sigma.
std::wstring py_lower(const std::wstring& s) {
  const auto& ct = std::use_facet<std::ctype<wchar_t>>(utf8_locale());
  const auto letter = [&](wchar_t c) { return ct.is(std::ctype_base::alpha, c); };
  std::wstring out;
  for (size_t i = 0; i < s.size(); ++i) {
    const wchar_t c = s[i];
    if (c == 0x130) {
      out += L"i\u0307";
    } else if (c == 0x3A3) {
      const bool after_letter = i > 0 && letter(s[i - 1]);
      const bool before_letter = i + 1 < s.size() && letter(s[i + 1]);
      out += after_letter && !before_letter ? L'\u03C2' : L'\u03C3';
    } else {
      out += ct.tolower(c);
    }
  }
  return out;
}

// BeautifulSoup(text, "html.parser").text for the markup a caption may hold: tags (`<` then a letter,
// `/`, `!` or `?`, up to `>`) and comments dropped, character references unescaped.
std::string html_text(const std::string& s) {
  std::string text;
  size_t i = 0;
  while (i < s.size()) {
    if (s[i] == '<' && i + 1 < s.size()) {
      const char c = s[i + 1];
      if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '/' || c == '!' || c == '?') {
        const bool comment = s.compare(i, 4, "<!--") == 0;
        const size_t end = comment ? s.find("-->", i + 4) : s.find('>', i + 1);
        if (end != std::string::npos) {
          i = end + (comment ? 3 : 1);
          continue;
        }
      }
    }
    text += s[i++];
  }
  return html_unescape(text);
}

}  // namespace

std::string opensora_clean_caption(const std::string& caption_in) {
  // std::regex recurses per repeated character: a bound keeps its stack and its time small (T5 keeps
  // 300 tokens of what comes out anyway).
  if (caption_in.size() > 4096)
    fail("a prompt of ", caption_in.size(), " bytes: Open-Sora's caption cleaning takes prompts of at most 4096 (T5 reads 300 tokens)");
  // The patterns of Open-Sora 1.2's clean_caption (opensora/models/text_encoder/t5.py), in its order.
  // clang-format off
  static const Sub person(L"<person>", L"person");
  static const Sub url1(L"\\b((?:https?:(?:\\/{1,3}|[a-zA-Z0-9%])|[a-zA-Z0-9.\\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\\w/-]*\\b\\/?(?!@)))", L"");
  static const Sub url2(L"\\b((?:www:(?:\\/{1,3}|[a-zA-Z0-9%])|[a-zA-Z0-9.\\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\\w/-]*\\b\\/?(?!@)))", L"");
  static const Sub nick(L"@[\\w\\d]+\\b", L"");
  static const Sub cjk(L"[\u31c0-\u31ef]+|[\u31f0-\u31ff]+|[\u3200-\u32ff]+|[\u3300-\u33ff]+|[\u3400-\u4dbf]+|[\u4dc0-\u4dff]+|[\u4e00-\u9fff]+", L"");
  static const Sub dashes(L"[\\-\u058A\u05BE\u1400\u1806\u2010-\u2015\u2E17\u2E1A\u2E3A\u2E3B\u2E40\u301C\u3030\u30A0\uFE31\uFE32\uFE58\uFE63\uFF0D]+", L"-");
  static const Sub dquotes(L"[`\u00B4\u00AB\u00BB\u201C\u201D\u00A8]", L"\"");
  static const Sub squotes(L"[\u2018\u2019]", L"'");
  static const Sub quot(L"&quot;?", L"");
  static const Sub amp(L"&amp", L"");
  static const Sub ip(L"\\d{1,3}\\.\\d{1,3}\\.\\d{1,3}\\.\\d{1,3}", L" ");
  static const Sub article(L"\\d:\\d\\d\\s+$", L"");
  static const Sub newline(L"\\\\n", L" ");
  static const Sub hash_short(L"#\\d{1,3}\\b", L"");
  static const Sub hash_long(L"#\\d{5,}\\b", L"");
  static const Sub digits(L"\\b\\d{6,}\\b", L"");
  static const Sub filenames(L"\\S+\\.(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)", L"");
  static const Sub quotes2(L"[\"']{2,}", L"\"");
  static const Sub dots(L"[\\.]{2,}", L" ");
  static const Sub bad_punct(L"[#\u00AE\u2022\u00A9\u2122&@\u00B7\u00BA\u00BD\u00BE\u00BF\u00A1\u00A7~\\)\\(\\]\\[\\}\\{\\|\\\\\\/\\*]{1,}", L" ");
  static const Sub spaced_dot(L"\\s+\\.\\s+", L" ");
  static const Sub dash_or_underscore(L"(?:-|_)", L" ");
  static const Sub code1(L"\\b[a-zA-Z]{1,3}\\d{3,15}\\b", L"");
  static const Sub code2(L"\\b[a-zA-Z]+\\d+[a-zA-Z]+\\b", L"");
  static const Sub code3(L"\\b\\d+[a-zA-Z]+\\d+\\b", L"");
  static const Sub shipping(L"(worldwide\\s+)?(free\\s+)?shipping", L"");
  static const Sub download(L"(free\\s)?download(\\sfree)?", L"");
  static const Sub click(L"\\bclick\\b\\s(?:for|on)\\s\\w+", L"");
  static const Sub extensions(L"\\b(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)(\\simage[s]?)?", L"");
  static const Sub page(L"\\bpage\\s+\\d+\\b", L"");
  static const Sub code4(L"\\b\\d*[a-zA-Z]+\\d+[a-zA-Z]+\\d+[a-zA-Z\\d]*\\b", L" ");
  static const Sub dimensions(L"\\b\\d+\\.?\\d*[x\u0445\u00D7]\\d+\\.?\\d*\\b", L"");
  static const Sub colon(L"\\b\\s+:\\s+", L": ");
  static const Sub punct_space(L"(\\D[,\\./])\\b", L"$1 ");
  static const Sub spaces(L"\\s+", L" ");
  static const Sub quoted(L"^[\"']([\\w\\W]+)[\"']$", L"$1");
  static const Sub lead(L"^['_,\\-:;]", L"");
  static const Sub trail(L"['_,\\-:\\-+]$", L"");
  static const Sub dotword(L"^\\.\\S+$", L"");
  // clang-format on
  std::wstring c = py_lower(py_strip(widen(unquote_plus(caption_in))));
  for (const Sub* s : {&person, &url1, &url2}) c = (*s)(c);
  c = widen(html_text(narrow(c)));
  for (const Sub* s : {&nick, &cjk, &dashes, &dquotes, &squotes, &quot, &amp, &ip, &article, &newline, &hash_short, &hash_long,
                       &digits, &filenames, &quotes2, &dots, &bad_punct, &spaced_dot})
    c = (*s)(c);
  if (dash_or_underscore.count(c) > 3) c = dash_or_underscore(c);
  // basic_clean: ftfy.fix_text (not applied, as for Wan), html.unescape twice, strip.
  c = py_strip(widen(html_unescape(html_unescape(narrow(c)))));
  for (const Sub* s : {&code1, &code2, &code3, &shipping, &download, &click, &extensions, &page, &code4, &dimensions, &colon,
                       &punct_space, &spaces, &quoted, &lead, &trail, &dotword})
    c = (*s)(c);
  return narrow(py_strip(c));
}

std::string opensora_prompt(const std::string& prompt, double aes) {
  std::string p = prompt;
  if (aes >= 0 && p.find("aesthetic score:") == std::string::npos) {
    char suffix[64];
    std::snprintf(suffix, sizeof suffix, " aesthetic score: %.1f.", aes);
    p += suffix;
  }
  return opensora_clean_caption(opensora_clean_caption(p));
}

}  // namespace ditto
