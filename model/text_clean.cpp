// Prompt cleaning (see text_clean.h).
#include "model/text_clean.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <utility>
#include <vector>

#include "model/atomic_file.h"

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

}  // namespace ditto
