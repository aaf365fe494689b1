# `cmake --install`: the ditto command (bin/), the shipped demo models (share/ditto/models/), the
# libraries and their headers (lib/, include/), and a package config so that another CMake project
# builds against them with find_package(ditto) and links ditto::pipeline (and the others).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(TARGETS ditto RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/models/ DESTINATION ${CMAKE_INSTALL_DATADIR}/ditto/models)
install(TARGETS ditto_torch ${DITTO_EXPORTED_LIBRARIES} EXPORT dittoTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
foreach(dir model dist cache pipeline demo launcher)
  install(DIRECTORY ${PROJECT_SOURCE_DIR}/${dir}/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/${dir} FILES_MATCHING PATTERN "*.h")
endforeach()
install(EXPORT dittoTargets NAMESPACE ditto:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/ditto)
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/dittoConfig.cmake.in ${PROJECT_BINARY_DIR}/dittoConfig.cmake
                              INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/ditto)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/dittoConfigVersion.cmake COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/dittoConfig.cmake ${PROJECT_BINARY_DIR}/dittoConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/ditto)
