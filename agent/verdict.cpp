#include "verdict.h"

namespace cw {

std::string_view toString(Verdict v) {
  switch (v) {
    case Verdict::Captured:
      return "captured";
    case Verdict::Bypassed:
      return "bypassed";
    case Verdict::Proxy:
      return "proxy";
    case Verdict::Local:
      return "local";
    case Verdict::Unknown:
      return "unknown";
  }
  return "unknown";
}

std::string_view toString(Outcome o) {
  switch (o) {
    case Outcome::Open:
      return "open";
    case Outcome::Refused:
      return "refused";
    case Outcome::Failed:
      return "failed";
    case Outcome::Reset:
      return "reset";
    case Outcome::PeerClosed:
      return "peer-closed";
    case Outcome::Data:
      return "data";
    case Outcome::Closed:
      return "closed";
  }
  return "unknown";
}

Outcome outcomeFromClose(uint8_t flags, uint64_t bytes_received) {
  if (bytes_received > 0) return Outcome::Data;
  if ((flags & CW_F_RESET_RECEIVED) != 0) return Outcome::Reset;
  if ((flags & CW_F_PEER_FIN) != 0) return Outcome::PeerClosed;
  return Outcome::Closed;
}

}  // namespace cw
