// The steerd.v1 contract may only grow. proto/steerd/v1/descriptor_set.binpb is the
// descriptor set of the last released protos (scripts/proto-baseline.sh); this test
// loads it into a DescriptorPool and compares it with the descriptors compiled into
// this binary (the generated pool), so a change that would break a released client
// fails CI, naming the message and field: a field removed without reserving its number
// and name, a field renumbered, renamed, retyped, relabelled or moved in or out of a
// oneof, a message, enum, service or method removed, a method's request or response type
// or streaming changed, an enum value removed without reserving its number, or renamed,
// or a reservation dropped. Renamed enum values are breaking here too (the JSON and text
// forms carry the names), so AIP-126's renames happened before the baseline was first
// recorded. The self-checks run the same checker on altered copies of the baseline, so
// the check cannot pass by checking nothing.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>

#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "steerd/v1/common.pb.h"
#include "steerd/v1/generation.pb.h"
#include "steerd/v1/models.pb.h"
#include "steerd/v1/training.pb.h"
#include "steerd/v1/vectors.pb.h"

namespace steerd {
namespace {

namespace pb = ::google::protobuf;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr char kPackage[] = "steerd.v1";
constexpr char kBaselinePath[] = STEERD_SOURCE_DIR "/proto/steerd/v1/descriptor_set.binpb";

// What a comparison found: breaking changes, one line each, and how many baseline
// elements were compared (so a check of an empty baseline cannot look like a pass).
struct CompatReport {
  std::vector<std::string> problems;
  int checked = 0;
};

std::string TypeName(const pb::FieldDescriptor& field) {
  if (field.message_type() != nullptr) return field.message_type()->full_name();
  if (field.enum_type() != nullptr) return field.enum_type()->full_name();
  return field.type_name();
}

std::string LabelName(const pb::FieldDescriptor& field) {
  if (field.is_repeated()) return field.is_map() ? "map" : "repeated";
  return field.has_optional_keyword() ? "optional" : "singular";
}

std::string OneofName(const pb::FieldDescriptor& field) {
  const pb::OneofDescriptor* oneof = field.real_containing_oneof();
  return oneof == nullptr ? "none" : oneof->name();
}

// Compares everything of the baseline in package steerd.v1 with `current`, where it is
// looked up by full name.
class CompatChecker {
 public:
  explicit CompatChecker(const pb::DescriptorPool& current) : current_(current) {}

  CompatReport Check(const std::vector<const pb::FileDescriptor*>& baseline_files) {
    for (const pb::FileDescriptor* file : baseline_files) {
      if (file->package() != kPackage) continue;
      for (int i = 0; i < file->message_type_count(); ++i) CheckMessage(*file->message_type(i));
      for (int i = 0; i < file->enum_type_count(); ++i) CheckEnum(*file->enum_type(i));
      for (int i = 0; i < file->service_count(); ++i) CheckService(*file->service(i));
    }
    return std::move(report_);
  }

 private:
  void Problem(std::string text) { report_.problems.push_back(std::move(text)); }

  void CheckMessage(const pb::Descriptor& old_message) {
    ++report_.checked;
    const pb::Descriptor* message = current_.FindMessageTypeByName(old_message.full_name());
    if (message == nullptr) {
      Problem(absl::StrCat("message ", old_message.full_name(), " is gone"));
      return;
    }
    for (int i = 0; i < old_message.field_count(); ++i) {
      CheckField(*old_message.field(i), *message);
    }
    // A reservation protects a number or name from reuse; dropping it would allow that.
    for (int i = 0; i < old_message.reserved_range_count(); ++i) {
      const pb::Descriptor::ReservedRange* range = old_message.reserved_range(i);
      for (int number = range->start; number < range->end; ++number) {
        if (!message->IsReservedNumber(number)) {
          Problem(absl::StrCat(message->full_name(), ": reserved number ", number,
                               " is no longer reserved"));
        }
      }
    }
    for (int i = 0; i < old_message.reserved_name_count(); ++i) {
      if (!message->IsReservedName(old_message.reserved_name(i))) {
        Problem(absl::StrCat(message->full_name(), ": reserved name \"",
                             old_message.reserved_name(i), "\" is no longer reserved"));
      }
    }
    for (int i = 0; i < old_message.nested_type_count(); ++i) {
      CheckMessage(*old_message.nested_type(i));
    }
    for (int i = 0; i < old_message.enum_type_count(); ++i) {
      CheckEnum(*old_message.enum_type(i));
    }
  }

  void CheckField(const pb::FieldDescriptor& old_field, const pb::Descriptor& message) {
    ++report_.checked;
    const std::string where = old_field.full_name();
    const pb::FieldDescriptor* by_name = message.FindFieldByName(old_field.name());
    const pb::FieldDescriptor* by_number = message.FindFieldByNumber(old_field.number());
    if (by_number != nullptr && by_number->name() != old_field.name()) {
      Problem(absl::StrCat(where, ": number ", old_field.number(), " now belongs to field \"",
                           by_number->name(), "\""));
    }
    if (by_name != nullptr && by_name->number() != old_field.number()) {
      Problem(absl::StrCat(where, ": number changed from ", old_field.number(), " to ",
                           by_name->number()));
    }
    if (by_name == nullptr && by_number == nullptr) {
      // Removed: allowed only with its number and name reserved, so neither is reused.
      if (!message.IsReservedNumber(old_field.number())) {
        Problem(absl::StrCat(where, ": removed, and its number ", old_field.number(),
                             " is not reserved"));
      }
      if (!message.IsReservedName(old_field.name())) {
        Problem(absl::StrCat(where, ": removed, and its name is not reserved"));
      }
      return;
    }
    if (by_name == nullptr || by_name != by_number) return;  // Reported above.
    const pb::FieldDescriptor& field = *by_name;
    if (TypeName(field) != TypeName(old_field)) {
      Problem(absl::StrCat(where, ": type changed from ", TypeName(old_field), " to ",
                           TypeName(field)));
    }
    if (LabelName(field) != LabelName(old_field)) {
      Problem(absl::StrCat(where, ": label changed from ", LabelName(old_field), " to ",
                           LabelName(field)));
    }
    if (OneofName(field) != OneofName(old_field)) {
      Problem(absl::StrCat(where, ": oneof changed from ", OneofName(old_field), " to ",
                           OneofName(field)));
    }
    if (field.json_name() != old_field.json_name()) {
      Problem(absl::StrCat(where, ": JSON name changed from ", old_field.json_name(), " to ",
                           field.json_name()));
    }
  }

  void CheckEnum(const pb::EnumDescriptor& old_enum) {
    ++report_.checked;
    const pb::EnumDescriptor* current_enum = current_.FindEnumTypeByName(old_enum.full_name());
    if (current_enum == nullptr) {
      Problem(absl::StrCat("enum ", old_enum.full_name(), " is gone"));
      return;
    }
    for (int i = 0; i < old_enum.value_count(); ++i) {
      ++report_.checked;
      const pb::EnumValueDescriptor& old_value = *old_enum.value(i);
      const std::string where = absl::StrCat(old_enum.full_name(), ".", old_value.name());
      const pb::EnumValueDescriptor* by_number =
          current_enum->FindValueByNumber(old_value.number());
      if (by_number == nullptr) {
        if (!current_enum->IsReservedNumber(old_value.number())) {
          Problem(absl::StrCat(where, ": value ", old_value.number(),
                               " removed without reserving its number"));
        }
        continue;
      }
      // Strict: JSON and text format carry the name, so a rename breaks their readers.
      if (by_number->name() != old_value.name()) {
        Problem(absl::StrCat(where, ": value ", old_value.number(), " renamed to ",
                             by_number->name()));
      }
    }
    for (int i = 0; i < old_enum.reserved_range_count(); ++i) {
      const pb::EnumDescriptor::ReservedRange* range = old_enum.reserved_range(i);
      for (int number = range->start; number <= range->end; ++number) {  // end inclusive
        if (!current_enum->IsReservedNumber(number)) {
          Problem(absl::StrCat(old_enum.full_name(), ": reserved number ", number,
                               " is no longer reserved"));
        }
      }
    }
  }

  void CheckService(const pb::ServiceDescriptor& old_service) {
    ++report_.checked;
    const pb::ServiceDescriptor* service = current_.FindServiceByName(old_service.full_name());
    if (service == nullptr) {
      Problem(absl::StrCat("service ", old_service.full_name(), " is gone"));
      return;
    }
    for (int i = 0; i < old_service.method_count(); ++i) {
      ++report_.checked;
      const pb::MethodDescriptor& old_method = *old_service.method(i);
      const std::string where = old_method.full_name();
      const pb::MethodDescriptor* method = service->FindMethodByName(old_method.name());
      if (method == nullptr) {
        Problem(absl::StrCat("method ", where, " is gone"));
        continue;
      }
      if (method->input_type()->full_name() != old_method.input_type()->full_name()) {
        Problem(absl::StrCat(where, ": request type changed from ",
                             old_method.input_type()->full_name(), " to ",
                             method->input_type()->full_name()));
      }
      if (method->output_type()->full_name() != old_method.output_type()->full_name()) {
        Problem(absl::StrCat(where, ": response type changed from ",
                             old_method.output_type()->full_name(), " to ",
                             method->output_type()->full_name()));
      }
      if (method->client_streaming() != old_method.client_streaming() ||
          method->server_streaming() != old_method.server_streaming()) {
        Problem(absl::StrCat(where, ": streaming changed"));
      }
    }
  }

  const pb::DescriptorPool& current_;
  CompatReport report_;
};

pb::FileDescriptorSet ReadBaseline() {
  std::ifstream in(kBaselinePath, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot read " << kBaselinePath
                         << "; scripts/proto-baseline.sh writes it";
  std::stringstream bytes;
  bytes << in.rdbuf();
  pb::FileDescriptorSet set;
  EXPECT_TRUE(set.ParseFromString(bytes.str())) << kBaselinePath << " is not a descriptor set";
  return set;
}

// A pool holding `set`, and its files in order. Files must come with their imports
// (protoc --include_imports), dependencies first, as protoc writes them.
struct BuiltPool {
  std::unique_ptr<pb::DescriptorPool> pool = std::make_unique<pb::DescriptorPool>();
  std::vector<const pb::FileDescriptor*> files;
};

BuiltPool Build(const pb::FileDescriptorSet& set) {
  BuiltPool built;
  for (const pb::FileDescriptorProto& file : set.file()) {
    const pb::FileDescriptor* descriptor = built.pool->BuildFile(file);
    EXPECT_NE(descriptor, nullptr) << "cannot build " << file.name();
    if (descriptor != nullptr) built.files.push_back(descriptor);
  }
  return built;
}

// The baseline compared with an altered copy of itself (a stand-in for "the current
// protos"): `alter` edits the copy before it is built.
CompatReport CheckAltered(const std::function<void(pb::FileDescriptorSet*)>& alter) {
  const pb::FileDescriptorSet baseline = ReadBaseline();
  pb::FileDescriptorSet altered = baseline;
  alter(&altered);
  const BuiltPool old_pool = Build(baseline);
  const BuiltPool new_pool = Build(altered);
  return CompatChecker(*new_pool.pool).Check(old_pool.files);
}

pb::FileDescriptorProto* FindFile(pb::FileDescriptorSet* set, const std::string& name) {
  for (pb::FileDescriptorProto& file : *set->mutable_file()) {
    if (file.name() == name) return &file;
  }
  ADD_FAILURE() << name << " is not in the baseline";
  return set->add_file();
}

pb::DescriptorProto* FindMessage(pb::FileDescriptorProto* file, const std::string& name) {
  for (pb::DescriptorProto& message : *file->mutable_message_type()) {
    if (message.name() == name) return &message;
  }
  ADD_FAILURE() << name << " is not in " << file->name();
  return file->add_message_type();
}

template <typename Repeated, typename Pred>
void EraseIf(Repeated* items, Pred pred) {
  for (int i = items->size() - 1; i >= 0; --i) {
    if (pred(items->Get(i))) items->DeleteSubrange(i, 1);
  }
}

pb::DescriptorProto* GenerateRequestOf(pb::FileDescriptorSet* set) {
  return FindMessage(FindFile(set, "steerd/v1/generation.proto"), "GenerateRequest");
}

pb::FieldDescriptorProto* FieldOf(pb::DescriptorProto* message, const std::string& name) {
  for (pb::FieldDescriptorProto& field : *message->mutable_field()) {
    if (field.name() == name) return &field;
  }
  ADD_FAILURE() << name << " is not a field of " << message->name();
  return message->add_field();
}

void DropField(pb::DescriptorProto* message, const std::string& name) {
  EraseIf(message->mutable_field(),
          [&](const pb::FieldDescriptorProto& field) { return field.name() == name; });
}

// ------------------------------------------------------------------- the real check

TEST(ProtoCompatTest, CurrentProtosKeepTheReleasedContract) {
  // Link every steerd.v1 file into this binary, so the generated pool has them all.
  const std::vector<const pb::FileDescriptor*> linked = {
      v1::VectorRef::descriptor()->file(), v1::GenerateRequest::descriptor()->file(),
      v1::Model::descriptor()->file(), v1::Job::descriptor()->file(),
      v1::Vector::descriptor()->file()};
  ASSERT_EQ(linked.size(), 5u);

  const BuiltPool baseline = Build(ReadBaseline());
  const CompatReport report =
      CompatChecker(*pb::DescriptorPool::generated_pool()).Check(baseline.files);
  EXPECT_THAT(report.problems, IsEmpty())
      << "The protos break the released v1 contract (" << kBaselinePath << "):\n  "
      << absl::StrJoin(report.problems, "\n  ")
      << "\nAdd instead of changing; reserve the number and name of a removed field.";
  // Everything of the baseline was looked at: its services, messages, fields and enums.
  EXPECT_GT(report.checked, 200);
}

TEST(ProtoCompatTest, BaselineHoldsTheV1Services) {
  const BuiltPool baseline = Build(ReadBaseline());
  for (const char* service : {"Models", "Vectors", "Generation", "Training"}) {
    EXPECT_NE(baseline.pool->FindServiceByName(absl::StrCat(kPackage, ".", service)), nullptr)
        << service;
  }
  // --include_imports: the baseline builds on its own, without protoc's include path.
  EXPECT_NE(baseline.pool->FindMessageTypeByName("google.protobuf.Timestamp"), nullptr);
}

// ------------------------------------------------- self-checks on altered baselines

TEST(ProtoCompatSelfCheck, AnUnchangedCopyPasses) {
  const CompatReport report = CheckAltered([](pb::FileDescriptorSet*) {});
  EXPECT_THAT(report.problems, IsEmpty());
  EXPECT_GT(report.checked, 200);
}

TEST(ProtoCompatSelfCheck, ARemovedFieldFails) {
  const CompatReport report = CheckAltered(
      [](pb::FileDescriptorSet* set) { DropField(GenerateRequestOf(set), "ignore_eos"); });
  EXPECT_THAT(report.problems,
              Contains(HasSubstr("steerd.v1.GenerateRequest.ignore_eos: removed, and its "
                                 "number 7 is not reserved")));
  EXPECT_THAT(report.problems,
              Contains(HasSubstr("steerd.v1.GenerateRequest.ignore_eos: removed, and its "
                                 "name is not reserved")));
}

TEST(ProtoCompatSelfCheck, ARemovedFieldWithItsNumberAndNameReservedPasses) {
  const CompatReport report = CheckAltered([](pb::FileDescriptorSet* set) {
    pb::DescriptorProto* request = GenerateRequestOf(set);
    DropField(request, "ignore_eos");
    pb::DescriptorProto::ReservedRange* range = request->add_reserved_range();
    range->set_start(7);
    range->set_end(8);  // exclusive
    request->add_reserved_name("ignore_eos");
  });
  EXPECT_THAT(report.problems, IsEmpty());
}

TEST(ProtoCompatSelfCheck, ARemovedFieldWithOnlyItsNumberReservedFails) {
  const CompatReport report = CheckAltered([](pb::FileDescriptorSet* set) {
    pb::DescriptorProto* request = GenerateRequestOf(set);
    DropField(request, "ignore_eos");
    pb::DescriptorProto::ReservedRange* range = request->add_reserved_range();
    range->set_start(7);
    range->set_end(8);
  });
  EXPECT_THAT(report.problems, Contains(HasSubstr("ignore_eos: removed, and its name")));
  EXPECT_EQ(report.problems.size(), 1u);
}

TEST(ProtoCompatSelfCheck, ARenumberedFieldFails) {
  const CompatReport report = CheckAltered([](pb::FileDescriptorSet* set) {
    FieldOf(GenerateRequestOf(set), "ignore_eos")->set_number(17);
  });
  EXPECT_THAT(report.problems,
              Contains("steerd.v1.GenerateRequest.ignore_eos: number changed from 7 to 17"));
}

TEST(ProtoCompatSelfCheck, ARenamedFieldFails) {
  const CompatReport report = CheckAltered([](pb::FileDescriptorSet* set) {
    pb::FieldDescriptorProto* field = FieldOf(GenerateRequestOf(set), "ignore_eos");
    field->set_name("skip_eos");
    field->clear_json_name();
  });
  EXPECT_THAT(report.problems, Contains("steerd.v1.GenerateRequest.ignore_eos: number 7 now "
                                        "belongs to field \"skip_eos\""));
}

TEST(ProtoCompatSelfCheck, ARetypedOrRelabelledFieldFails) {
  CompatReport report = CheckAltered([](pb::FileDescriptorSet* set) {
    FieldOf(GenerateRequestOf(set), "ignore_eos")->set_type(pb::FieldDescriptorProto::TYPE_INT32);
  });
  EXPECT_THAT(report.problems, Contains("steerd.v1.GenerateRequest.ignore_eos: type changed "
                                        "from bool to int32"));
  report = CheckAltered([](pb::FileDescriptorSet* set) {
    FieldOf(GenerateRequestOf(set), "ignore_eos")
        ->set_label(pb::FieldDescriptorProto::LABEL_REPEATED);
  });
  EXPECT_THAT(report.problems, Contains("steerd.v1.GenerateRequest.ignore_eos: label changed "
                                        "from singular to repeated"));
  // A message-typed field pointing at another message.
  report = CheckAltered([](pb::FileDescriptorSet* set) {
    FieldOf(GenerateRequestOf(set), "sampling")->set_type_name(".steerd.v1.SteeringSpec");
  });
  EXPECT_THAT(report.problems,
              Contains("steerd.v1.GenerateRequest.sampling: type changed from "
                       "steerd.v1.SamplingParams to steerd.v1.SteeringSpec"));
}

TEST(ProtoCompatSelfCheck, ARemovedMethodAndMessageFail) {
  const CompatReport report = CheckAltered([](pb::FileDescriptorSet* set) {
    pb::FileDescriptorProto* file = FindFile(set, "steerd/v1/models.proto");
    EraseIf(file->mutable_service(0)->mutable_method(),
            [](const pb::MethodDescriptorProto& m) { return m.name() == "GetModel"; });
    EraseIf(file->mutable_message_type(),
            [](const pb::DescriptorProto& m) { return m.name() == "GetModelRequest"; });
  });
  EXPECT_THAT(report.problems, Contains("method steerd.v1.Models.GetModel is gone"));
  EXPECT_THAT(report.problems, Contains("message steerd.v1.GetModelRequest is gone"));
}

TEST(ProtoCompatSelfCheck, ARemovedServiceFails) {
  const CompatReport report = CheckAltered([](pb::FileDescriptorSet* set) {
    FindFile(set, "steerd/v1/models.proto")->clear_service();
  });
  EXPECT_THAT(report.problems, Contains("service steerd.v1.Models is gone"));
}

TEST(ProtoCompatSelfCheck, AChangedMethodSignatureFails) {
  const CompatReport report = CheckAltered([](pb::FileDescriptorSet* set) {
    pb::MethodDescriptorProto* method =
        FindFile(set, "steerd/v1/models.proto")->mutable_service(0)->mutable_method(1);
    ASSERT_EQ(method->name(), "GetModel");
    method->set_input_type(".steerd.v1.ListModelsRequest");
    method->set_server_streaming(true);
  });
  EXPECT_THAT(report.problems,
              Contains("steerd.v1.Models.GetModel: request type changed from "
                       "steerd.v1.GetModelRequest to steerd.v1.ListModelsRequest"));
  EXPECT_THAT(report.problems, Contains("steerd.v1.Models.GetModel: streaming changed"));
}

pb::EnumDescriptorProto* FinishReasonOf(pb::FileDescriptorSet* set) {
  pb::FileDescriptorProto* file = FindFile(set, "steerd/v1/generation.proto");
  for (pb::EnumDescriptorProto& e : *file->mutable_enum_type()) {
    if (e.name() == "FinishReason") return &e;
  }
  ADD_FAILURE() << "no FinishReason";
  return file->add_enum_type();
}

TEST(ProtoCompatSelfCheck, ARemovedEnumValueFailsUnlessReserved) {
  CompatReport report = CheckAltered([](pb::FileDescriptorSet* set) {
    EraseIf(FinishReasonOf(set)->mutable_value(), [](const pb::EnumValueDescriptorProto& v) {
      return v.name() == "FINISH_REASON_CANCELLED";
    });
  });
  EXPECT_THAT(report.problems,
              Contains("steerd.v1.FinishReason.FINISH_REASON_CANCELLED: value 3 removed "
                       "without reserving its number"));
  report = CheckAltered([](pb::FileDescriptorSet* set) {
    pb::EnumDescriptorProto* finish_reason = FinishReasonOf(set);
    EraseIf(finish_reason->mutable_value(), [](const pb::EnumValueDescriptorProto& v) {
      return v.name() == "FINISH_REASON_CANCELLED";
    });
    pb::EnumDescriptorProto::EnumReservedRange* range = finish_reason->add_reserved_range();
    range->set_start(3);
    range->set_end(3);  // inclusive
  });
  EXPECT_THAT(report.problems, IsEmpty());
}

TEST(ProtoCompatSelfCheck, ARenamedEnumValueFails) {
  const CompatReport report = CheckAltered([](pb::FileDescriptorSet* set) {
    for (pb::EnumValueDescriptorProto& value : *FinishReasonOf(set)->mutable_value()) {
      if (value.name() == "FINISH_REASON_LENGTH") value.set_name("FINISH_REASON_MAX_TOKENS");
    }
  });
  EXPECT_THAT(report.problems,
              Contains("steerd.v1.FinishReason.FINISH_REASON_LENGTH: value 2 renamed to "
                       "FINISH_REASON_MAX_TOKENS"));
}

TEST(ProtoCompatSelfCheck, ARemovedNestedEnumFails) {
  const CompatReport report = CheckAltered([](pb::FileDescriptorSet* set) {
    pb::DescriptorProto* vector = FindMessage(FindFile(set, "steerd/v1/vectors.proto"), "Vector");
    vector->clear_enum_type();
    FieldOf(vector, "source")->set_type(pb::FieldDescriptorProto::TYPE_INT32);
    FieldOf(vector, "source")->clear_type_name();
  });
  EXPECT_THAT(report.problems, Contains("enum steerd.v1.Vector.Source is gone"));
  EXPECT_THAT(report.problems, Contains("steerd.v1.Vector.source: type changed from "
                                        "steerd.v1.Vector.Source to int32"));
}

}  // namespace
}  // namespace steerd
